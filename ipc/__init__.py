"""ringstack ipc package."""
