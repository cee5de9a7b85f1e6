"""A module that a test puts on the allowlist, which *imports* dangerous callables without defining them.

``tests.security.reexport:run`` is ``subprocess.run``: allowing a module must not allow everything it imported.
"""

from __future__ import annotations

from os import system  # re-exported on purpose: the attack surface under test
from subprocess import run  # re-exported on purpose: the attack surface under test

__all__ = ["run", "system"]
