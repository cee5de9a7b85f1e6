"""Named contexts in ``~/.config/traind/config.toml``, as kubectl and docker have them: switch between a team
server (a URL and a token) and a local stack without exporting variables.

The file (``$XDG_CONFIG_HOME/traind/config.toml``; ``TRAIND_CONFIG`` names another)::

    current = "team"

    [contexts.team]                       # a traind serve: a URL and a token
    api_url = "https://traind.example"
    token_file = "~/.config/traind/team.token"   # or token = "traind_..." (then the file must be 0600)

    [contexts.local]                      # Redis and storage directly (a stack on this machine)
    redis_url = "redis://127.0.0.1:6379/0"
    storage = "/home/me/.local/share/traind"

:func:`resolve` decides what a command talks to: explicit arguments, then the environment (``TRAIND_API_URL`` and
``TRAIND_API_TOKEN``, then ``TRAIND_REDIS_URL``/``TRAIND_STORAGE_DIR``), then the context named by ``TRAIND_CONTEXT``
or the file's ``current``. A context's token is only ever sent to that context's own ``api_url``.

Like ssh with a private key, a token is not read from a file that group or others may read (or write): the one-line
refusal says which file and the ``chmod`` that fixes it. Every problem of the file is one line naming it.

>>> target = resolve(api_url="https://traind.example", token="t0k", env={})
>>> target.api_url, target.source, "t0k" in repr(target)
('https://traind.example', 'arguments', False)
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from jobs.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the backport (pyproject's tomli marker)
    import tomli as tomllib

MAX_CONFIG_BYTES = 64 * 1024  # bounded before reading: a config is a few hundred bytes
MAX_TOKEN_BYTES = 4096
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a bare TOML key, so the writer needs no quoting
CONTEXT_KEYS = ("api_url", "token", "token_file", "ca_bundle", "redis_url", "storage")
# `traind --context NAME` (daemon/cli.py sets it for one command): outranks TRAIND_CONTEXT and everything below it
option_context: str | None = None
REMOTE_KEYS = frozenset({"api_url", "token", "token_file", "ca_bundle"})
LOCAL_KEYS = frozenset({"redis_url", "storage"})


@dataclass(frozen=True)
class Context:
    """One ``[contexts.NAME]`` table: remote (``api_url`` and ``token``/``token_file``) or local (``redis_url``,
    ``storage``). Values as written (``~`` not expanded)."""

    name: str
    api_url: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    ca_bundle: str | None = None
    redis_url: str | None = None
    storage: str | None = None

    @property
    def remote(self) -> bool:
        return self.api_url is not None

    def describe(self) -> str:
        """One line for ``traind context list``: the URL or Redis it names (a Redis URL's password redacted)."""
        if self.remote:
            how = f"token file {self.token_file}" if self.token_file else "inline token" if self.token else "no token"
            return f"{self.api_url} ({how}" + (f", CA bundle {self.ca_bundle})" if self.ca_bundle else ")")
        from jobs.redis.urls import redact_url

        parts = [f"redis {redact_url(self.redis_url)}" if self.redis_url else "redis: the local default"]
        if self.storage:
            parts.append(f"storage {self.storage}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Config:
    """The parsed file: where it is, its ``current`` context and every context by name."""

    path: Path
    current: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)
    exists: bool = False


@dataclass(frozen=True)
class Remote:
    """Talk to a ``traind serve`` at ``api_url`` with ``token`` (never shown in ``repr``). ``source`` says where the
    choice came from: ``arguments``, ``environment`` or ``context NAME (FILE)``."""

    api_url: str
    token: str | None = field(repr=False)
    source: str
    ca_bundle: str | None = None  # a PEM file of CAs to verify the server with (a private CA); None: the system's


@dataclass(frozen=True)
class Local:
    """Talk to Redis and the storage directly; None means the settings' default (the local stack, ...)."""

    redis_url: str | None = field(repr=False)
    storage: str | None
    source: str


Target = Remote | Local


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """``TRAIND_CONFIG``, else ``$XDG_CONFIG_HOME/traind/config.toml``, else ``~/.config/traind/config.toml``."""
    env = os.environ if env is None else env
    if env.get("TRAIND_CONFIG"):
        return Path(env["TRAIND_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path("~/.config").expanduser()  # XDG: a relative value is invalid
    return root / "traind" / "config.toml"


def _bad(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {problem}")


def check_name(name: str, path: Path | None = None) -> str:
    """``name`` if it is a valid context name (1-64 of A-Z a-z 0-9 _ . -), else ConfigError."""
    if not NAME_RE.fullmatch(name):
        msg = f"context name {name[:80]!r}: expected 1-64 of A-Z a-z 0-9 _ . -"
        raise _bad(path, msg) if path else ConfigError(msg)
    return name


def check_api_url(url: str, where: str) -> str:
    """``url`` if it is an ``http(s)://host[:port][/path]`` URL without credentials, query or fragment."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as e:
        raise ConfigError(f"{where}: invalid API URL {url[:200]!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: API URL {url[:200]!r} must be http(s)://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{where}: API URL must hold no user, password, query or fragment (the token goes in "
                          "token/token_file)")
    return url.rstrip("/")


def _too_open(st: os.stat_result) -> bool:
    return os.name == "posix" and bool(st.st_mode & 0o077)


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse the config file (an absent file is an empty config); ConfigError with one line naming the file and
    every problem found.

    >>> load(Path("/nonexistent/traind.toml")).contexts
    {}
    """
    path = config_path(env) if path is None else path
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return Config(path)
    except OSError as e:
        raise _bad(path, f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _bad(path, f"larger than {MAX_CONFIG_BYTES} bytes; not a traind config")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad(path, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise _bad(path, f"not valid TOML: {e}") from None
    problems: list[str] = []
    unknown = sorted(set(doc) - {"current", "contexts"})
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(unknown)} (expected current, contexts)")
    current = doc.get("current")
    if current is not None and not isinstance(current, str):
        problems.append("current: expected a context name (a string)")
        current = None
    tables = doc.get("contexts", {})
    if not isinstance(tables, dict):
        problems.append("contexts: expected tables [contexts.NAME]")
        tables = {}
    contexts: dict[str, Context] = {}
    for name, table in tables.items():
        where = f"contexts.{name}"
        if not NAME_RE.fullmatch(name):
            problems.append(f"{where}: context names are 1-64 of A-Z a-z 0-9 _ . -")
            continue
        if not isinstance(table, dict):
            problems.append(f"{where}: expected a table of api_url/token/token_file or redis_url/storage")
            continue
        bad_keys = sorted(set(table) - set(CONTEXT_KEYS))
        if bad_keys:
            problems.append(f"{where}: unknown key(s) {', '.join(bad_keys)} (expected {', '.join(CONTEXT_KEYS)})")
        not_text = sorted(k for k in CONTEXT_KEYS if k in table and not isinstance(table[k], str))
        if not_text:
            problems.append(f"{where}: {', '.join(not_text)} must be strings")
            continue
        keys = set(table) & set(CONTEXT_KEYS)
        if keys & REMOTE_KEYS and keys & LOCAL_KEYS:
            problems.append(f"{where}: a context is remote (api_url, token/token_file) or local (redis_url, "
                            "storage), not both")
        elif keys & REMOTE_KEYS and "api_url" not in keys:
            problems.append(f"{where}: token/token_file without api_url")
        elif "token" in keys and "token_file" in keys:
            problems.append(f"{where}: token and token_file both set; keep one")
        contexts[name] = Context(name, **{k: table[k] for k in keys})
    if current is not None and current not in contexts and not problems:
        problems.append(f"current = {current!r} names no [contexts.{current[:64]}] table")
    if problems:
        raise _bad(path, "; ".join(problems))
    return Config(path, current, contexts, exists=True)


def _toml_str(v: str) -> str:
    # JSON's string escapes (\" \\ \n \uXXXX, ASCII-only output) are all valid in a TOML basic string.
    return json.dumps(v, ensure_ascii=True)


def dumps(config: Config) -> str:
    """The file's text for ``config`` (a tiny writer for this fixed schema of strings; :func:`load` reads it back).

    >>> print(dumps(Config(Path("c"), "t", {"t": Context("t", api_url="https://x")})))
    current = "t"
    <BLANKLINE>
    [contexts.t]
    api_url = "https://x"
    <BLANKLINE>
    """
    lines: list[str] = []
    if config.current is not None:
        lines += [f"current = {_toml_str(config.current)}", ""]
    for name, ctx in sorted(config.contexts.items()):
        lines.append(f"[contexts.{check_name(name)}]")
        lines += [f"{k} = {_toml_str(getattr(ctx, k))}" for k in CONTEXT_KEYS if getattr(ctx, k) is not None]
        lines.append("")
    return "\n".join(lines)


def save(config: Config) -> None:
    """Write ``config`` atomically with mode 0600 (it may hold a token), creating its directory with mode 0700."""
    path = config.path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".tmp")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(config))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_token_file(path_text: str, where: str) -> str:
    """The token in ``path_text`` (``~`` expanded): refused when group/others may access the file, when empty,
    too long or more than one line."""
    path = Path(path_text).expanduser()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{where}: token file {path} is not a regular file")
            if _too_open(st):
                raise ConfigError(f"{where}: token file {path} is accessible by group/others (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
            data = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{where}: cannot read token file {path}: {e.strerror or e}") from None
    return token_text(data, f"{where}: token file {path}")


def token_text(data: bytes | str, where: str) -> str:
    """``data`` stripped, when it is one token (printable ASCII, no spaces, bounded); ConfigError naming ``where``."""
    text = (data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data).strip()
    if not text or len(text) > MAX_TOKEN_BYTES or not text.isascii() or not text.isprintable() or " " in text:
        raise ConfigError(f"{where}: expected one token (printable ASCII, no spaces, at most {MAX_TOKEN_BYTES} "
                          "characters)")
    return text


def context_token(config: Config, ctx: Context) -> str | None:
    """The token of a remote context: its ``token_file``'s, or its inline ``token`` (refused when the config file
    itself is accessible by group/others, as ssh refuses such a key)."""
    where = f"{config.path}: contexts.{ctx.name}"
    if ctx.token_file is not None:
        return read_token_file(ctx.token_file, where)
    if ctx.token is None:
        return None
    try:
        st = os.stat(config.path)
    except OSError as e:
        raise ConfigError(f"{config.path}: cannot stat: {e.strerror or e}") from None
    if _too_open(st):
        raise ConfigError(f"{config.path}: holds a token (contexts.{ctx.name}) but is accessible by group/others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {config.path}`")
    return token_text(ctx.token, where)


def resolve(api_url: str | None = None, token: str | None = None, redis_url: str | None = None,
            storage: str | None = None, context: str | None = None, env: Mapping[str, str] | None = None,
            path: Path | None = None, *, with_token: bool = True) -> Target:
    """What to talk to. The first of these that applies:

    1. explicit ``api_url`` (remote) or ``redis_url``/``storage`` (local) arguments;
    2. a context named explicitly: ``context``, else ``TRAIND_CONTEXT`` (it must exist);
    3. ``TRAIND_API_URL`` (remote), then ``TRAIND_REDIS_URL``/``TRAIND_STORAGE_DIR`` (local) in ``env``;
    4. the file's ``current`` context;
    5. nothing configured: :class:`Local` with the settings' defaults.

    The token of a remote target: the ``token`` argument; else ``TRAIND_API_TOKEN`` unless ``TRAIND_API_URL``
    names another server; else the current (or named) context's token when the URL is that context's own
    ``api_url``. So a token never travels to a server other than the one it was configured with.
    ``with_token=False``: only which target (no token file is read; :attr:`Remote.token` is None).

    >>> resolve(env={"TRAIND_API_URL": "http://127.0.0.1:8600", "TRAIND_API_TOKEN": "x"}).source
    'environment (TRAIND_API_URL)'
    >>> resolve(redis_url="redis://h:6379/0", env={}).source
    'arguments'
    """
    env = os.environ if env is None else env
    env_url = check_api_url(env["TRAIND_API_URL"], "TRAIND_API_URL") if env.get("TRAIND_API_URL") else None
    chosen = context or option_context or env.get("TRAIND_CONTEXT") or None
    why = ("named" if context else "--context" if option_context else "TRAIND_CONTEXT" if chosen else "current")
    config: Config | None = None

    def cfg() -> Config:
        nonlocal config
        if config is None:
            config = load(path, env)
        return config

    def remote(url: str, source: str, ctx: Context | None = None) -> Remote:
        env_token = bool(env.get("TRAIND_API_TOKEN")) and env_url in (None, url)
        if ctx is None and with_token and token is None and not env_token:
            ctx = _pick(cfg(), chosen, required=False)  # the file is read only when its token may be needed
        own = ctx is not None and ctx.api_url is not None and check_api_url(ctx.api_url, _where(cfg(), ctx)) == url
        # the CA bundle: TRAIND_API_CA_BUNDLE, else the context's own (only for that context's api_url)
        ca = env.get("TRAIND_API_CA_BUNDLE") or None
        if ca is None and own and ctx is not None and ctx.ca_bundle:
            ca = str(Path(ctx.ca_bundle).expanduser())
        if not with_token:
            return Remote(url, None, source, ca)
        if token is not None:
            return Remote(url, token_text(token, "token argument"), source, ca)
        if env_token:
            return Remote(url, token_text(env["TRAIND_API_TOKEN"], "TRAIND_API_TOKEN"), source, ca)
        if own and ctx is not None:
            return Remote(url, context_token(cfg(), ctx), source, ca)
        return Remote(url, None, source, ca)

    if api_url is not None:
        return remote(check_api_url(api_url, "api_url argument"), "arguments")
    if redis_url is not None or storage is not None:
        return Local(redis_url, storage, "arguments")
    if chosen is None and env_url is not None:
        return remote(env_url, "environment (TRAIND_API_URL)")
    if chosen is None and (env.get("TRAIND_REDIS_URL") or env.get("TRAIND_STORAGE_DIR")):
        return Local(env.get("TRAIND_REDIS_URL") or None, env.get("TRAIND_STORAGE_DIR") or None,
                     "environment (TRAIND_REDIS_URL/TRAIND_STORAGE_DIR)")
    ctx = _pick(cfg(), chosen, required=True)
    if ctx is None:
        return Local(None, None, "defaults (no option, TRAIND_ variable or config file names one)")
    because = {"named": "named on the command line", "--context": "the --context option",
               "TRAIND_CONTEXT": "TRAIND_CONTEXT", "current": "the file's current"}[why]
    source = f"context {ctx.name} ({because}; {cfg().path})"
    if ctx.api_url is not None:
        return remote(check_api_url(ctx.api_url, _where(cfg(), ctx)), source, ctx)
    return Local(ctx.redis_url, ctx.storage, source)


def _where(config: Config, ctx: Context) -> str:
    return f"{config.path}: contexts.{ctx.name}"


def _pick(config: Config, chosen: str | None, required: bool) -> Context | None:
    """The context ``chosen`` names (ConfigError if none, when ``required``), else the file's current one."""
    if chosen is not None:
        ctx = config.contexts.get(chosen)
        if ctx is None and required:
            known = ", ".join(sorted(config.contexts)) or "none"
            raise ConfigError(f"{config.path}: no context named {chosen[:64]!r} (known: {known})")
        return ctx
    return config.contexts.get(config.current) if config.current else None


def with_context(config: Config, ctx: Context, make_current: bool = False) -> Config:
    """``config`` with ``ctx`` added or replaced (and made current)."""
    check_name(ctx.name, config.path)
    return replace(config, contexts={**config.contexts, ctx.name: ctx},
                   current=ctx.name if make_current or config.current is None else config.current)
