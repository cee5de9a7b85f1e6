"""The supervisor's alert sender: reads the outbox, sends each (entry, URL) once, retries with backoff.

Several supervisors may run :meth:`AlertSender.step` at once: a delivery is claimed with ``SET NX`` before it is
sent (the claim lives while the send may take, then says ``done`` for a day), so one event makes one message per
URL. Sends run on short-lived daemon threads with Apprise's connect/read timeouts: the supervisor's pass never
waits for a webhook. A failed send is tried again after ``notify_backoff_s`` doubling up to ``notify_backoff_max_s``;
after ``notify_attempts`` the job gets an ``alert_failed`` event (a sent one: ``alert_sent``).

>>> # sender = AlertSender(store, SupervisorSettings(notify="json://hooks.example.org/traind"))
>>> # sender.step()   # from the supervisor's loop; sender.step(now_ms=...) in tests
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from jobs.alerts.kinds import ALL
from jobs.alerts.message import compose, retry_delay_s
from jobs.alerts.urls import (
    NOTIFY_MAX,
    URL_MAX,
    ScrubFilter,
    instantiate,
    redact,
    scrub,
    secret_fragments,
    shape_problem,
)
from jobs.contract import keys
from jobs.contract.events import EventKind
from jobs.contract.ids import validate_job_id
from jobs.contract.records import JobRecord, to_int
from jobs.errors import InvalidJobIdError
from jobs.redis.store import JobStore
from jobs.settings import SupervisorSettings

log = logging.getLogger("traind.alerts")

SCAN = 200  # outbox entries read per pass (the oldest first)
MAX_INFLIGHT = 8  # sends running at once per supervisor
EVENT_MAX = 8192  # characters of an outbox entry's event JSON read
_DAY_MS = 86_400_000

# Deletes a claim only while this sender still holds it (a failed send hands its delivery back for the retry).
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"

Send = Callable[[str, str, str, float], tuple[bool, str]]


@dataclass(frozen=True)
class Target:
    """One URL an alert goes to: ``key`` names it in claims (``s0`` the spec's first, ``d<sha>`` a default)."""

    key: str
    url: str


def targets(notify_urls: Sequence[str], defaults: Sequence[str]) -> list[Target]:
    """The job's own URLs then the server's defaults, each URL once.

    >>> [t.key for t in targets(["json://a/x", "json://b/y"], ["json://a/x", "json://c/z"])][:3]
    ['s0', 's1', 'd4774955d9256']
    """
    out: list[Target] = []
    seen: set[str] = set()
    for i, url in enumerate(notify_urls):
        if url not in seen:
            seen.add(url)
            out.append(Target(f"s{i}", url))
    for url in defaults:
        if url not in seen:
            seen.add(url)
            out.append(Target("d" + hashlib.sha256(url.encode()).hexdigest()[:12], url))
    return out


def parse_tries(raw: bytes | str | None) -> tuple[int, int]:
    """``(tries, next attempt ms)`` of a tries field ``"3:1700000000000"``; (0, 0) for none or junk.

    >>> parse_tries(b"2:1500"), parse_tries(None), parse_tries("x")
    ((2, 1500), (0, 0), (0, 0))
    """
    if raw is None:
        return 0, 0
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    n, _, at = text.partition(":")
    return to_int(n, 0) or 0, to_int(at, 0) or 0


def stored_urls(raw: bytes | str | None) -> list[str]:
    """The ``notify_urls`` field of a job hash (JSON list), bounded; a malformed value is no URL (and is logged)."""
    if raw is None:
        return []
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if len(text) > NOTIFY_MAX * (URL_MAX + 8) + 2:
        log.error("notify_urls field of %d characters: ignored", len(text))
        return []
    try:
        urls = json.loads(text)
    except (ValueError, RecursionError):
        urls = None
    if not isinstance(urls, list):
        log.error("notify_urls field is not a JSON list: ignored")
        return []
    return [u for u in urls[:NOTIFY_MAX] if isinstance(u, str) and shape_problem(u) is None]


class _ThreadLog(logging.Handler):
    """Keeps what Apprise logs (warnings up) on a sending thread: the reason a send failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_thread: dict[int, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        buf = self.by_thread.get(record.thread or 0)
        if buf is not None and len(buf) < 10:
            buf.append(record.getMessage())


_SCRUB = ScrubFilter()
_THREAD_LOG = _ThreadLog()
_installed = threading.Lock()
_ready = False


def _install_logging() -> None:
    """Once per process: Apprise's log lines pass through the scrubber, and sending threads keep theirs."""
    global _ready
    with _installed:
        if not _ready:
            lg = logging.getLogger("apprise")
            lg.addFilter(_SCRUB)
            lg.addHandler(_THREAD_LOG)
            _ready = True


def apprise_send(url: str, title: str, body: str, timeout_s: float) -> tuple[bool, str]:
    """Send one message with Apprise (connect and read timeouts ``timeout_s``); ``(ok, why it failed)``."""
    me = threading.get_ident()
    _THREAD_LOG.by_thread[me] = []
    try:
        plugin, why = instantiate(url)
        if plugin is None:
            return False, "; ".join(why)
        plugin.socket_connect_timeout = plugin.socket_read_timeout = timeout_s
        try:
            ok = bool(plugin.notify(body=body, title=title))
        except Exception as e:  # a plugin bug is this send's failure, never the supervisor's
            return False, f"{type(e).__name__}: {e}"
        said = _THREAD_LOG.by_thread.get(me) or []
        return ok, "" if ok else ("; ".join(said) or "Apprise reported a failure")
    finally:
        _THREAD_LOG.by_thread.pop(me, None)


@dataclass
class _Delivery:
    entry: str
    job_id: str
    alert: str
    target: Target
    shown: str
    tries: int  # failed sends before this one
    title: str
    body: str


@dataclass
class AlertReport:
    """What one :meth:`AlertSender.step` did (``entry:target`` names)."""

    started: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    dropped: int = 0  # outbox entries removed: done, nothing to send, or malformed


class AlertSender:
    """Sends the outbox's alerts from one supervisor (see the module doc).

    >>> # AlertSender(store, settings, send=fake_send).step(now_ms=1_700_000_000_000)
    """

    def __init__(self, store: JobStore, settings: SupervisorSettings, send: Send | None = None,
                 me: str | None = None) -> None:
        self.store, self.r = store, store.r
        self.settings = settings
        self.defaults = [u.get_secret_value() for u in settings.notify]
        self.events = set(settings.notify_events) & set(ALL)
        self.me = me or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._send = send or apprise_send
        self._lease_ms = int((2 * settings.notify_timeout_s + 5) * 1000)
        self.done_ttl_ms = max(_DAY_MS, int(2 * settings.notify_attempts
                                            * (settings.notify_backoff_max_s + settings.notify_timeout_s) * 1000))
        self._results: queue.SimpleQueue[tuple[_Delivery, bool, str]] = queue.SimpleQueue()
        self._inflight: dict[str, _Delivery] = {}
        self._shown: dict[str, str] = {}
        self._cursor = "-"  # the last outbox entry read when the previous pass stopped at SCAN entries
        self._drops: list[tuple[str, list[Target]]] = []
        self._release = self.r.register_script(_RELEASE)
        self._renew = self.r.register_script(_RENEW)
        _install_logging()

    # -- one pass ----------------------------------------------------------------------------------------------------
    def step(self, now_ms: int | None = None) -> AlertReport:
        """Record finished sends, keep in-flight claims alive, start the sends that are due (Redis clock ``now_ms``)."""
        now = self.store.now_ms() if now_ms is None else int(now_ms)
        rep = AlertReport()
        self._harvest(now, rep)
        for name in list(self._inflight):
            d = self._inflight[name]
            self._renew(keys=[keys.alert_claim(d.entry, d.target.key)], args=[self.me, self._lease_ms])
        self._scan(now, rep)
        return rep

    def wait_idle(self, timeout_s: float) -> bool:
        """Until no send of this sender is running (tests, shutdown); True when none is."""
        for t in threading.enumerate():
            if t.name.startswith(f"alert-{self.me}-"):
                t.join(timeout_s)
        return not any(t.name.startswith(f"alert-{self.me}-") and t.is_alive() for t in threading.enumerate())

    def _harvest(self, now: int, rep: AlertReport) -> None:
        while True:
            try:
                d, ok, why = self._results.get_nowait()
            except queue.Empty:
                return
            name = f"{d.entry}:{d.target.key}"
            self._inflight.pop(name, None)
            claim, field_ = keys.alert_claim(d.entry, d.target.key), f"{d.entry}|{d.target.key}"
            tries = d.tries + 1
            why = scrub(why, secret_fragments(d.target.url, d.shown))[:500]
            if ok:
                self.r.pipeline().set(claim, "done", px=self.done_ttl_ms).hdel(keys.ALERTS_TRIES, field_).execute()
                rep.sent.append(name)
                log.info("job %s: %s alert sent to %s", d.job_id, d.alert, d.shown)
                self._event(d, EventKind.ALERT_SENT, f"{d.alert} alert sent to {d.shown}", "info", tries)
            elif tries >= self.settings.notify_attempts:
                self.r.pipeline().set(claim, "done", px=self.done_ttl_ms).hdel(keys.ALERTS_TRIES, field_).execute()
                rep.gave_up.append(name)
                log.warning("job %s: %s alert to %s not sent after %d tries; giving up: %s", d.job_id, d.alert,
                            d.shown, tries, why)
                self._event(d, EventKind.ALERT_FAILED, f"{d.alert} alert to {d.shown} not sent after {tries} tries: "
                            f"{why}", "warning", tries, error=why)
            else:
                delay = retry_delay_s(tries, self.settings.notify_backoff_s, self.settings.notify_backoff_max_s)
                self.r.hset(keys.ALERTS_TRIES, field_, f"{tries}:{now + int(delay * 1000)}")
                self._release(keys=[claim], args=[self.me])
                rep.retrying.append(name)
                log.warning("job %s: %s alert to %s failed (try %d/%d): %s; next try in %.1f s", d.job_id, d.alert,
                            d.shown, tries, self.settings.notify_attempts, why, delay)

    def _event(self, d: _Delivery, kind: EventKind, msg: str, level: str, tries: int, **extra: Any) -> None:
        if self.r.exists(keys.job(d.job_id)):  # a purged job gets no orphan event list
            self.store.add_event(d.job_id, kind, msg, level, alert=d.alert, target=d.shown, tries=tries, **extra)

    def _scan(self, now: int, rep: AlertReport) -> None:
        # Round robin over the outbox, SCAN entries a pass: entries waiting out a backoff never hide newer ones.
        start = "-" if self._cursor == "-" else f"({self._cursor}"
        entries = self.r.xrange(keys.ALERTS_OUTBOX, start, "+", count=SCAN)
        self._cursor = entries[-1][0].decode() if len(entries) == SCAN else "-"
        if not entries:
            return
        try:
            self._handle(entries, now, rep)
        finally:
            if self._drops:  # one round trip for every entry done this pass
                pipe = self.r.pipeline()
                for eid, tgts in self._drops:
                    pipe.xdel(keys.ALERTS_OUTBOX, eid)
                    if tgts:
                        pipe.hdel(keys.ALERTS_TRIES, *[f"{eid}|{t.key}" for t in tgts])
                self._drops.clear()
                pipe.execute()

    def _handle(self, entries: list[Any], now: int, rep: AlertReport) -> None:
        parsed = [(eid.decode(), self._parse(eid.decode(), f)) for eid, f in entries]
        jobs = sorted({p[0] for _, p in parsed if p is not None})
        pipe = self.r.pipeline(transaction=False)
        for job_id in jobs:
            pipe.hget(keys.job(job_id), "notify_urls")
        urls = dict(zip(jobs, pipe.execute(raise_on_error=False)))
        records: dict[str, JobRecord] = {}
        for eid, p in parsed:
            try:
                if p is None or now - to_int(eid.split("-")[0], 0) > self.done_ttl_ms or p[1] not in self.events:
                    self._drop(eid, [], rep)  # malformed, too old to send without risking a second copy, or muted
                    continue
                raw = urls.get(p[0])
                tgts = targets(stored_urls(None if isinstance(raw, Exception) else raw), self.defaults)
                self._entry(eid, p, tgts, now, records, rep)
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception:  # one bad entry (a job key of the wrong type...) is one bad row: logged once, removed
                log.exception("alert outbox entry %s: cannot handle it; removing it", eid)
                self._drop(eid, [], rep)

    def _parse(self, eid: str, f: dict[bytes, bytes]) -> tuple[str, str, dict[str, Any]] | None:
        try:
            job_id = validate_job_id(f.get(b"job", b"").decode())
            alert = f.get(b"alert", b"").decode()
            raw = f.get(b"event", b"{}")
            ev = json.loads(raw) if len(raw) <= EVENT_MAX else {}
            if alert not in ALL or not isinstance(ev, dict):
                raise ValueError(f"alert {alert[:40]!r}, event {type(ev).__name__}")
            return job_id, alert, ev
        except (UnicodeDecodeError, InvalidJobIdError, ValueError, RecursionError) as e:
            log.error("alert outbox entry %s is malformed (%s); removing it", eid, str(e)[:200])
            return None

    def _drop(self, eid: str, tgts: list[Target], rep: AlertReport) -> None:
        """Remove the entry (and its tries) at the end of this pass."""
        self._drops.append((eid, tgts))
        rep.dropped += 1

    def _entry(self, eid: str, p: tuple[str, str, dict[str, Any]], tgts: list[Target], now: int,
               records: dict[str, JobRecord], rep: AlertReport) -> None:
        if not tgts:
            self._drop(eid, [], rep)
            return
        pipe = self.r.pipeline(transaction=False)
        for t in tgts:
            pipe.get(keys.alert_claim(eid, t.key))
        pipe.hmget(keys.ALERTS_TRIES, [f"{eid}|{t.key}" for t in tgts])
        *claims, tries = pipe.execute()
        if all(c == b"done" for c in claims):
            self._drop(eid, tgts, rep)
            return
        job_id, alert, ev = p
        for t, claim, raw_tries in zip(tgts, claims, tries):
            n, next_at = parse_tries(raw_tries)
            if claim is not None or next_at > now or len(self._inflight) >= MAX_INFLIGHT:
                continue  # done, being sent (here or by another supervisor), waiting out its backoff, or busy
            if not self.r.set(keys.alert_claim(eid, t.key), self.me, nx=True, px=self._lease_ms):
                continue
            if job_id not in records:
                records[job_id] = JobRecord.parse(self.r.hgetall(keys.job(job_id)), job_id)
            title, body = compose(alert, job_id, records[job_id], ev, self.settings.public_url)
            d = _Delivery(eid, job_id, alert, t, self._redacted(t.url), n, title, body)
            self._start(d)
            rep.started.append(f"{eid}:{t.key}")

    def _redacted(self, url: str) -> str:
        if url not in self._shown:
            if len(self._shown) > 10_000:  # URLs of jobs long gone: bounded memory
                self._shown.clear()
            shown = redact(url)
            _SCRUB.add(url, shown)
            self._shown[url] = shown
        return self._shown[url]

    def _start(self, d: _Delivery) -> None:
        name = f"{d.entry}:{d.target.key}"
        self._inflight[name] = d

        def run() -> None:
            try:
                ok, why = self._send(d.target.url, d.title, d.body, self.settings.notify_timeout_s)
            except Exception as e:  # an injected sender's bug: a failed try, never a lost delivery
                ok, why = False, f"{type(e).__name__}: {e}"
            self._results.put((d, ok, why))

        threading.Thread(target=run, name=f"alert-{self.me}-{name}", daemon=True).start()
