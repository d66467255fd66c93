"""ringstack bdev package."""
