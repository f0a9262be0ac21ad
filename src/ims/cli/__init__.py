"""The `ims` command."""
