"""ringstack drivers package."""
