"""Job owners: who submitted a job (an API token's name, ``--owner``, ``Client(owner=...)``, else the OS user).
Fair share, per-owner limits and the owner filters read the job hash's ``owner`` field.

>>> check_owner("alice@lab")
'alice@lab'
"""

from __future__ import annotations

import getpass
import re

from jobs.errors import SpecError

OWNER_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")
FALLBACK = "unknown"  # an OS user that cannot be named (no passwd entry in a container) or is not a valid owner


def check_owner(name: str) -> str:
    """``name`` when it is a valid owner (1-64 of ``A-Z a-z 0-9 . _ @ -``), else SpecError naming the rule."""
    if not isinstance(name, str) or not OWNER_RE.fullmatch(name):
        shown = repr(name)[:80]
        raise SpecError([f"owner: expected 1-64 characters of A-Z a-z 0-9 . _ @ -, received {shown}"])
    return name


def default_owner() -> str:
    """The OS user when it is a valid owner name, else ``unknown``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        return FALLBACK
    return user if OWNER_RE.fullmatch(user) else FALLBACK
