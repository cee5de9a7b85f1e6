"""Example builders and loaders; the default TRAIND_ALLOWED_MODULES allows this package."""
