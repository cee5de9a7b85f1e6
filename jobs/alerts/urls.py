"""Notify URLs (Apprise's: ``json://``, ``slack://``, ``discord://``, ``mailto://``, ``matrix://``...): their shape
(pure, for the spec model), their validation by Apprise itself (at submit and for ``TRAIND_NOTIFY``), and their
redaction wherever one is shown (status, API, events, logs).

>>> shape_problem("json://127.0.0.1:8000/hook"), shape_problem("no scheme")
(None, "expected an Apprise URL such as 'json://host/path' or 'slack://TokenA/TokenB/TokenC'")
>>> redact("json://user:secretpw@127.0.0.1:8000/hook?-token=abc")  # Apprise's privacy form, query left out
'json://user:****@127.0.0.1:8000/hook?***'
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote

NOTIFY_MAX = 10  # URLs in one spec's ``notify`` list (and in TRAIND_NOTIFY)
URL_MAX = 2048  # characters of one URL: checked before anything parses it

_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://\S*")
_PIECES = re.compile(r"[/:@?&=#,;+]+")
_LOCK = threading.Lock()  # validation swaps the apprise logger's handlers for a moment


def shape_problem(url: str) -> str | None:
    """What is wrong with ``url`` before Apprise looks at it (a scheme, no spaces or control characters), or None.
    Never quotes the URL: it may carry a password."""
    if len(url) > URL_MAX:
        return f"expected at most {URL_MAX} characters, received {len(url)}"
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        return "expected printable text, received control characters"
    if not _SHAPE.fullmatch(url):
        return "expected an Apprise URL such as 'json://host/path' or 'slack://TokenA/TokenB/TokenC'"
    return None


def scheme(url: str) -> str:
    """The URL's scheme (``json``), or ``?``."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep and head else "?"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def instantiate(url: str) -> tuple[Any | None, list[str]]:
    """Apprise's plugin for ``url`` and None, or None and what Apprise said is wrong (secrets scrubbed).

    Apprise reports a bad URL through its logger (quoting the URL): the messages are captured here, never logged.
    """
    import apprise

    cap = _Capture()
    lg = logging.getLogger("apprise")
    with _LOCK:
        saved = lg.handlers[:], lg.propagate
        lg.handlers, lg.propagate = [cap], False
        try:
            plugin = apprise.Apprise.instantiate(url, suppress_exceptions=False)
            error: str | None = None
        except Exception as e:  # Apprise raises its own TypeError subclasses for a misconfigured URL
            plugin, error = None, str(e)
        finally:
            lg.handlers, lg.propagate = saved
    if plugin is not None:
        return plugin, []
    why = [error] if error else []
    why += [m for m in cap.messages if m not in why]
    frags = secret_fragments(url, f"{scheme(url)}://")
    return None, [scrub(w, frags)[:300] for w in why] or ["Apprise does not recognise it"]


def url_problems(urls: Sequence[object], where: str = "notify", shapes: bool = True) -> list[str]:
    """Every problem of a list of notify URLs, each naming its place (``notify.2``) and the URL redacted; [] when
    Apprise can use them all. ``shapes=False`` leaves the count and the shape to the caller (the spec model checks
    them) and reports only what Apprise refuses.

    >>> url_problems(["json://127.0.0.1:8000/hook", "nosuch://s3cret-token"])
    ["notify.1: 'nosuch://***' is not a usable Apprise URL: Unparseable URL nosuch://s...n"]
    """
    problems: list[str] = []
    if len(urls) > NOTIFY_MAX and shapes:
        problems.append(f"{where}: expected at most {NOTIFY_MAX} URLs, received {len(urls)}")
    for i, url in enumerate(urls[:NOTIFY_MAX]):
        if not isinstance(url, str):
            if shapes:
                problems.append(f"{where}.{i}: expected a URL string, received {type(url).__name__}")
            continue
        if bad := shape_problem(url):
            if shapes:
                problems.append(f"{where}.{i}: {bad}")
            continue
        plugin, why = instantiate(url)
        if plugin is None:
            problems.append(f"{where}.{i}: {redact(url)!r} is not a usable Apprise URL: {'; '.join(why)}")
    return problems


def redact(url: str, plugin: Any | None = None) -> str:
    """``url`` as it may be shown: Apprise's privacy form (passwords and tokens masked) without the query string
    (``?***`` when there was one: Apprise shows headers and parameters there, which can be keys); ``scheme://***``
    for a URL Apprise cannot read."""
    if shape_problem(url):
        return f"{scheme(url)}://***"
    if plugin is None:
        plugin, _ = instantiate(url)
    if plugin is None:
        return f"{scheme(url)}://***"
    try:
        shown = str(plugin.url(privacy=True)).split("?", 1)[0]
    except Exception:  # a plugin that cannot print itself: show nothing of it
        return f"{scheme(url)}://***"
    return (shown + "?***" if "?" in url else shown)[:URL_MAX]


def secret_fragments(url: str, shown: str) -> set[str]:
    """The pieces of ``url`` (user, password, host, path segments, query values) of 4+ characters that its
    redacted form ``shown`` does not show: what a log line must not contain."""
    body = url.partition("://")[2]
    out: set[str] = set()
    for piece in _PIECES.split(body):
        for p in (piece, unquote(piece)):
            if len(p) >= 4 and p not in shown:
                out.add(p)
    return out


def scrub(text: str, fragments: Iterable[str]) -> str:
    """``text`` with every fragment replaced by ``***`` (longest first, so no part of a longer one survives)."""
    for f in sorted(fragments, key=len, reverse=True):
        text = text.replace(f, "***")
    return text


class ScrubFilter(logging.Filter):
    """Rewrites log records that would show a known secret fragment (installed on the ``apprise`` logger by the
    sender: Apprise's own debug and warning lines may quote tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.fragments: set[str] = set()

    def add(self, url: str, shown: str) -> None:
        self.fragments |= secret_fragments(url, shown)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.fragments:
            msg = record.getMessage()
            clean = scrub(msg, self.fragments)
            if clean != msg:
                record.msg, record.args = clean, ()
        return True


def split_setting(value: str) -> list[str]:
    """``TRAIND_NOTIFY``'s comma-separated URLs (a comma inside one URL is written ``%2C``).

    >>> split_setting(" json://a/x , slack://T/B/C,")
    ['json://a/x', 'slack://T/B/C']
    """
    return [p.strip() for p in value.split(",") if p.strip()]


def stored_spec_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The job hash's ``spec`` field with the notify URLs masked (every reader of the spec sees only that), and
    ``notify_urls``, the URLs themselves, in a field that status and the API never show (records.py ``_HIDDEN``).

    >>> stored_spec_fields({"name": "x", "notify": ["json://u:pw@127.0.0.1:9/x"]})
    {'spec': {'name': 'x', 'notify': ['json://u:****@127.0.0.1:9/x']}, 'notify_urls': ['json://u:pw@127.0.0.1:9/x']}
    """
    urls = spec.get("notify") or []
    if not urls:
        return {"spec": spec}
    return {"spec": {**spec, "notify": [redact(u) for u in urls]}, "notify_urls": list(urls)}
