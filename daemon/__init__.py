"""traind's processes and command line: the supervisor, the ``traind`` CLI and the local stack (``traind up``)."""
