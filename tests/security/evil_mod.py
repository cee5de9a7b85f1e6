"""A module that exists on disk but is NOT on the test allowlist ("examples,tests.models").

Importing it writes a marker file (path from ``$SECURITY_TEST_MARKER``), so a test can prove that no traind process
ever imported it: nothing outside TRAIND_ALLOWED_MODULES may be imported, let alone called.
"""

from __future__ import annotations

import os
from typing import Any

# Same name as tests.security.helpers.MARKER_ENV (not imported from there: this module must stay self-contained).
# Not TRAIND_-prefixed: traind's settings refuse unknown TRAIND_ variables.
MARKER_ENV = "SECURITY_TEST_MARKER"


def _touch(what: str) -> None:
    path = os.environ.get(MARKER_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{what}\n")


_touch(f"imported {__name__}")


def build_model(**kwargs: Any) -> Any:
    """Would run as a model builder."""
    _touch("build_model called")
    raise RuntimeError("evil builder ran")


def load_data(**kwargs: Any) -> Any:
    """Would run as a data loader."""
    _touch("load_data called")
    raise RuntimeError("evil loader ran")


class EvilLayer:
    """Would be handed to Keras as a custom object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _touch("EvilLayer instantiated")
