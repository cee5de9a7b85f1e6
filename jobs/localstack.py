"""Finding the local stack of this machine with no export, as docker finds its daemon.

``traind up`` (:mod:`daemon.stack`) keeps its state next to its local storage root, in ``<root>.redis/``: ``url``
(the embedded Redis' URL with its password, 0600; kept after a stop so the next start reuses port and password)
and ``stack.json`` (the pid of ``traind up``, its storage and allowlist; removed when it stops). A command given no
Redis URL looks there: the root is ``TRAIND_STORAGE_DIR`` / ``--storage`` when it is a local path, else the
default location (``~/.local/share/traind``). A stack whose ``traind up`` is gone is not found.

Light on purpose (no pydantic): the read-only CLI commands use it before anything else is imported.

>>> # find()            # LocalStack(url='redis://:...@127.0.0.1:40213/0', storage='/home/you/...', ...) or None
>>> # find("/tmp/data") # the stack started with TRAIND_STORAGE_DIR=/tmp/data
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobs.errors import StorageLocationError
from jobs.storage.location import default_location, parse_location

STATE_FILE = "stack.json"
URL_FILE = "url"
_MAX_STATE_BYTES = 64 * 1024  # both files are a few hundred bytes; anything bigger is not ours


@dataclass(frozen=True)
class LocalStack:
    """A running local stack, as its state directory describes it."""

    url: str
    storage: str
    allowed_modules: list[str]
    pid: int
    state_dir: Path


def local_root(storage: str | os.PathLike[str] | None) -> Path:
    """The local directory a stack keeps its logs under: the storage root when it is a path, else the default."""
    try:
        kind, norm = parse_location(storage)
    except StorageLocationError:
        kind, norm = "object", ""
    return Path(norm if kind == "local" else default_location()).resolve()


def state_dir(storage: str | os.PathLike[str] | None) -> Path:
    """``<local root>.redis``: next to the storage root, never inside it (nothing a job names can reach it)."""
    root = local_root(storage)
    return root.with_name(root.name + ".redis")


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(_MAX_STATE_BYTES + 1)
    if len(data) > _MAX_STATE_BYTES:
        raise ValueError(f"{path}: larger than {_MAX_STATE_BYTES} bytes")
    return data.decode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, though its files would not have been readable
        return True
    return True


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600, also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def record(directory: Path, *, url: str, storage: str, allowed_modules: list[str]) -> None:
    """Called by ``traind up`` once its Redis answers: this process is now the machine's local stack."""
    write_private(directory / URL_FILE, url + "\n")
    write_private(directory / STATE_FILE, json.dumps({"pid": os.getpid(), "storage": storage,
                                                      "allowed_modules": allowed_modules}) + "\n")


def forget(directory: Path) -> None:
    """Called by ``traind up`` when it stops (the URL file stays: the next start reuses its port and password)."""
    try:
        (directory / STATE_FILE).unlink()
    except FileNotFoundError:
        pass


def recorded_url(directory: Path) -> str | None:
    """The URL the last stack of ``directory`` used (running or not), or None."""
    try:
        url = _read(directory / URL_FILE).strip()
        parts = urlsplit(url)
        return url if parts.scheme == "redis" and parts.port else None
    except (OSError, ValueError):
        return None


def find(storage: str | os.PathLike[str] | None = None) -> LocalStack | None:
    """The running stack whose state is next to ``storage`` (default: the default location), or None.

    With ``storage`` given, the stack must use that very storage (a stack of the default directory does not serve a
    command told to use ``s3://other``).
    """
    stack = running(state_dir(storage))
    if stack is not None and storage is not None:
        try:
            if parse_location(storage)[1] != parse_location(stack.storage)[1]:
                return None
        except StorageLocationError:
            return None
    return stack


def running(directory: Path) -> LocalStack | None:
    """The stack whose ``traind up`` recorded ``directory`` and still runs, whatever its storage, or None."""
    try:
        meta = json.loads(_read(directory / STATE_FILE))
        pid, stack_storage = int(meta["pid"]), str(meta["storage"])
        allowed = [str(m) for m in meta.get("allowed_modules") or []]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = recorded_url(directory)
    if url is None or not _alive(pid):
        return None
    return LocalStack(url=url, storage=stack_storage, allowed_modules=allowed, pid=pid, state_dir=directory)


def fill_settings(data: Any) -> Any:
    """Settings input (init arguments merged with ``TRAIND_*`` variables) completed from the local stack when no
    Redis URL was given: its URL, and its storage and allowlist where those were not given either."""
    if not isinstance(data, dict) or data.get("redis_url"):
        return data
    stack = find(data.get("storage_dir") or None)
    if stack is None:
        return data
    out = {**data, "redis_url": stack.url}
    out.setdefault("storage_dir", stack.storage)
    if "allowed_modules" not in out:
        out["allowed_modules"] = stack.allowed_modules
    return out
