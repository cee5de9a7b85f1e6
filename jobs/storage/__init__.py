"""Checkpoint and upload storage: the key-based backends (a local directory, an object store), hashing streams,
the checkpoint layout and where storage lives."""
