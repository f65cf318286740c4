"""The `ferrousforge` command line."""
