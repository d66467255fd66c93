"""ringstack reactor package."""
