"""ringstack tools package."""
