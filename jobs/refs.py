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
    if not isinstance(ref, str) or not _REF.match(ref):
        return (
            f"{what}: expected 'package.module:function' (identifiers only, no paths or '..'), received {ref!r}"
        )
    module = ref.split(":", 1)[0]
    if not any(module == a or module.startswith(a + ".") for a in allowed):
        return (
            f"{what}: module {module!r} is not allowed; allowed module prefixes are {list(allowed)!r} "
            "(set TRAIND_ALLOWED_MODULES on the client and the workers to change this)"
        )
    return None


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
        return getattr(module, attr)
    except AttributeError as e:
        raise NotAllowedError([f"{what}: module {module_name!r} has no attribute {attr!r}"]) from e
