"""`module:function` references and the module allowlist (nothing outside it is ever imported).

>>> check_ref("examples.regression:build_model", ["examples"])
'examples.regression:build_model'
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib.machinery import PathFinder
from pathlib import Path
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
        if not allowed:
            return (f"{what}: module {module!r} is not allowed: TRAIND_ALLOWED_MODULES is empty (the default); set it "
                    "to your package on the client and the workers, e.g. TRAIND_ALLOWED_MODULES=mycompany.models")
        return (
            f"{what}: module {module!r} is not allowed; allowed module prefixes are {list(allowed)!r} "
            "(set TRAIND_ALLOWED_MODULES on the client and the workers to change this)"
        )
    return None


def imported_problem(ref: str, allowed: Sequence[str], what: str = "reference") -> str | None:
    """Why an allowed-looking ``module:name`` is refused because ``name`` is only *imported* into the module (from
    a module outside the allowlist, or a module object itself), or None. Decided at submit without importing or
    running anything: the module's source is found on ``sys.path`` and read as a syntax tree. Where that cannot
    decide (no source, a name bound several ways, ``import *``), the worker's check after import decides.

    >>> imported_problem("examples.regression:np", ["examples"]) is not None
    True
    """
    module, name = ref.split(":", 1)
    loaded = sys.modules.get(module)
    if loaded is not None:  # already imported here: ask the object, as the worker will
        obj = getattr(loaded, name, None)
        home = getattr(obj, "__module__", None) if obj is not None else module
        if isinstance(home, str) and _allowed_module(home, allowed):
            return None
        where = f"is defined in module {home!r}"
    else:
        origin = _static_origin(module, name, tuple(allowed))
        if origin is None:
            return None
        where = f"is imported into {module} from {origin}, not defined there"
    return (f"{what}: {ref} {where}, not under the allowed module prefixes {list(allowed)!r}; expected a function "
            "or class defined in an allowed module (TRAIND_ALLOWED_MODULES)")


def _static_origin(module: str, name: str, allowed: tuple[str, ...]) -> str | None:
    path = _source_path(module)
    if path is None:
        return None
    try:
        bindings = _bindings(str(path), path.stat().st_mtime_ns, module)
    except (OSError, SyntaxError, ValueError, RecursionError):
        return None
    kinds = bindings.get(name)
    if not kinds or len(kinds) != 1:
        return None  # undefined here (``import *``, ``__getattr__``) or bound several ways: the worker decides
    (kind,) = kinds
    if kind == "defined":
        return None
    if kind.startswith("module "):
        return kind  # ``import numpy as np``: a module object is never callable code of an allowed module
    return None if _allowed_module(kind, allowed) else repr(kind)


def _source_path(module: str) -> Path | None:
    """Where ``module``'s source is, found like the import system would, without executing any package."""
    return _cached_source_path(module, tuple(sys.path))


@lru_cache(maxsize=256)
def _cached_source_path(module: str, path: tuple[str, ...]) -> Path | None:
    # Cached per module and sys.path: finding the spec stats the file system (most of submit_many's time after
    # validation, bench.scale). A stale None only defers the check to the worker, which checks after import; a
    # stale path fails its stat() in _static_origin, which then also defers.
    del path  # part of the cache key only
    parts = module.split(".")
    search: list[str] | None = None
    spec = None
    for i in range(len(parts)):
        try:
            spec = PathFinder.find_spec(".".join(parts[: i + 1]), search)
        except (ImportError, ValueError, OSError):
            return None
        if spec is None:
            return None
        if i < len(parts) - 1:
            if not spec.submodule_search_locations:
                return None
            search = list(spec.submodule_search_locations)
    origin = getattr(spec, "origin", None)
    return Path(origin) if isinstance(origin, str) and origin.endswith(".py") else None


@lru_cache(maxsize=256)
def _bindings(path: str, mtime_ns: int, module: str) -> dict[str, set[str]]:
    """Top-level names of a module's source -> how each is bound: ``defined`` (def, class, assignment),
    ``module <name>`` (``import x``) or the module it was imported from (``from x import y``, ``y = x.attr``)."""
    del mtime_ns  # part of the cache key only
    text = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(text)
    package = module if Path(path).name == "__init__.py" else module.rpartition(".")[0]
    out: dict[str, set[str]] = {}
    imported: dict[str, str] = {}

    def bind(n: str, how: str) -> None:
        out.setdefault(n, set()).add(how)

    def visit(body: list[ast.stmt]) -> None:
        for st in body:
            if isinstance(st, ast.Import):
                for a in st.names:
                    bound = a.asname or a.name.split(".")[0]
                    imported[bound] = a.asname and a.name or bound
                    bind(bound, f"module {imported[bound]!r}")
            elif isinstance(st, ast.ImportFrom):
                base = st.module or ""
                if st.level:
                    pkg = package.split(".")[: len(package.split(".")) - (st.level - 1)] if package else []
                    base = ".".join([*pkg, *([st.module] if st.module else [])])
                for a in st.names:
                    if a.name != "*":
                        imported[a.asname or a.name] = base
                        bind(a.asname or a.name, base)
            elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bind(st.name, "defined")
            elif isinstance(st, (ast.Assign, ast.AnnAssign)):
                targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                root = st.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                how = "defined"
                if isinstance(root, ast.Name) and root.id in imported and isinstance(st.value, ast.Attribute):
                    how = imported[root.id]  # ``run = subprocess.run``: still subprocess' function
                for t in targets:
                    if isinstance(t, ast.Name):
                        bind(t.id, how)
            elif isinstance(st, (ast.If, ast.Try, ast.With)):
                visit(st.body)
                for extra in (getattr(st, "orelse", []), getattr(st, "finalbody", [])):
                    visit(extra)
                for h in getattr(st, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return out


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
