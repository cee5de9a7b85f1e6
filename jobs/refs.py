"""`module:function` references and the module allowlist (nothing outside it is ever imported).

>>> check_ref("examples.regression:build_model", ["examples"])
'examples.regression:build_model'
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from jobs.errors import NotAllowedError

_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def ref_problem(ref: object, allowed: Sequence[str], what: str = "reference") -> str | None:
    """Why ``ref`` is refused, or None when it is an allowed `module:function`."""
    if not isinstance(ref, str) or not _REF.fullmatch(ref):  # fullmatch: '$' would allow a trailing newline
        return (
            f"{what}: expected 'package.module:function' from a module under TRAIND_ALLOWED_MODULES "
            f"(identifiers only, no paths or '..'), received {ref!r}"
        )
    module = ref.split(":", 1)[0]
    if not _allowed_module(module, allowed):
        return (
            f"{what}: module {module!r} is not allowed; allowed module prefixes are {list(allowed)!r} "
            "(set TRAIND_ALLOWED_MODULES on the client and the workers to change this)"
        )
    return None


def _allowed_module(module: str, allowed: Sequence[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def check_ref(ref: str, allowed: Sequence[str], what: str = "reference") -> str:
    """Return ``ref`` if allowed, else raise :class:`NotAllowedError`."""
    problem = ref_problem(ref, allowed, what)
    if problem:
        raise NotAllowedError([problem])
    return ref


def resolve_ref(ref: str, allowed: Sequence[str], what: str = "reference") -> Callable[..., Any]:
    """Import and return the object named by an allowed ``module:attr`` reference."""
    check_ref(ref, allowed, what)
    module_name, attr = ref.split(":", 1)
    module = importlib.import_module(module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError as e:
        raise NotAllowedError([f"{what}: module {module_name!r} has no attribute {attr!r}"]) from e
    # A name an allowed module merely imported (``from subprocess import run``) is not allowed code.
    home = getattr(obj, "__module__", None)
    if not isinstance(home, str) or not _allowed_module(home, allowed):
        raise NotAllowedError([
            f"{what}: {ref} is defined in module {home!r}, not under the allowed module prefixes {list(allowed)!r}; "
            "expected a function or class defined in an allowed module (TRAIND_ALLOWED_MODULES)"
        ])
    return obj
