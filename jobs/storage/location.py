"""Where storage lives: parse and check the storage setting (an absolute path or an object-store URL).

Light on purpose (no numpy, no fsspec until a URL is given): settings import it in every process.

>>> parse_location("s3://ml-checkpoints/traind/")
('object', 's3://ml-checkpoints/traind')
"""

from __future__ import annotations

import os
import re

from jobs.errors import StorageLocationError

# scheme -> fsspec protocol. gs/az need gcsfs/adlfs installed; the check happens when the location is parsed.
SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "abfs", "abfss": "abfss"}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")
_PREFIX_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,199}$")


def default_location() -> str:
    """The zero-setup default: ``$XDG_DATA_HOME/traind`` (``~/.local/share/traind``), absolute for every process of
    this user whatever its working directory (the old default, ``./traind-data``, differed per directory)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(base), "traind")


def parse_location(location: str | os.PathLike[str] | None) -> tuple[str, str]:
    """``("local", absolute path)`` or ``("object", normalised URL)``; StorageLocationError (one line) otherwise.

    >>> parse_location("/srv/traind")
    ('local', '/srv/traind')
    """
    if location is None:
        return "local", default_location()
    loc = os.fspath(location)
    shown = repr(_redact(loc))
    if not loc.strip():
        raise StorageLocationError(f"storage location {shown} is empty; expected an absolute path or a URL like "
                                   "s3://bucket/prefix")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", loc)
    if m is None:
        path = os.path.expanduser(loc)
        if not os.path.isabs(path):
            raise StorageLocationError(
                f"storage location {shown} is a relative path; expected an absolute path (e.g. {os.path.abspath(loc)})"
                " or a URL like s3://bucket/prefix, so that every process names the same place")
        return "local", os.path.normpath(path)
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "file":
        return parse_location(rest if rest.startswith("/") else f"./{rest}")
    if scheme not in SCHEMES:
        raise StorageLocationError(
            f"storage location {shown}: unsupported scheme {scheme!r}; expected an absolute path or one of "
            + ", ".join(f"{s}://" for s in ("s3", "gs", "az")))
    if "@" in rest.split("/", 1)[0] or "?" in rest or "#" in rest:
        raise StorageLocationError(
            f"storage location {shown}: credentials and options do not belong in the URL; use the standard "
            "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_PROFILE...)")
    protocol = SCHEMES[scheme]
    try:
        import fsspec

        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as e:
        raise StorageLocationError(f"storage location {shown}: scheme {scheme!r} is not available here ({e})") from e
    parts = [p for p in rest.split("/") if p]
    if not parts or not _BUCKET_RE.fullmatch(parts[0]):
        raise StorageLocationError(f"storage location {shown}: expected {scheme}://bucket[/prefix], with a bucket "
                                   "name of letters, digits, '.', '_' or '-'")
    bad = [p for p in parts[1:] if p in (".", "..") or not _PREFIX_PART_RE.fullmatch(p)]
    if bad:
        raise StorageLocationError(f"storage location {shown}: prefix part {bad[0]!r} is not a plain name "
                                   "(letters, digits, '_', '-', '.', '+', '='; no '..')")
    return "object", f"{scheme}://" + "/".join(parts)


def _redact(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://***@host``: messages never repeat a credential."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", url)
