"""Operator reads and actions shared by the CLI, the HTTP API and the Python client."""
