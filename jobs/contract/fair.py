"""Fair share between owners: which queued job a free worker takes, and per-owner limits on running jobs.

The rule (one atomic Lua step, :data:`jobs.contract.fair_lua.FAIR_POP`): the worker looks at its queues in its usual
order (most devices first, then priority high, default, low). In the first queue that has a job it may take, it
examines at most ``head_max`` messages from the head and takes the job whose owner has the smallest **share**:

1. fewest devices running now (running jobs' devices, plus jobs popped and not yet claimed), then
2. least recent device time: the device-milliseconds of the owner's ended attempts, each decayed by
   ``2 ** (-age / half_life)``, plus the running attempts' device time so far, then
3. the oldest message (its place in the queue).

So priorities still come first (a high job is never passed by a default one), two owners with work each get half
the workers, and with one worker they alternate instead of one owner's backlog going first. A job whose owner is at
its limit of running jobs (``max_running`` or a per-owner ``limits`` entry) is skipped, not failed and not moved:
it stays at its place and is taken once the owner is under the limit. When every message in every queue belongs to
owners at their limit the pop answers ``blocked``, and the worker waits a short poll before looking again.

Accounting never drifts: "running now" is recomputed on every pop from the leases (what runs) and the claim
reservations (which expire after ``claim_ttl_s``); past device time is charged inside the transition that ends an
attempt (``FAIR_CHARGE``), exactly once whoever ends it, and decays away.

>>> parse_owner_limits("alice=2, bob=0")
{'alice': 2, 'bob': 0}
>>> FairPolicy(max_running=3, limits={"alice": 1}).limit_for("alice"), FairPolicy(max_running=3).limit_for("bob")
(1, 3)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from jobs.contract import keys
from jobs.contract.fair_lua import FAIR_POP
from jobs.contract.owners import OWNER_RE
from jobs.contract.records import to_int

PopResult = tuple[Literal["take", "blocked", "empty"], str | None, str | None, str | None]


def parse_owner_limits(text: str) -> dict[str, int]:
    """``"alice=2,bob=1"`` -> ``{"alice": 2, "bob": 1}``; ValueError naming every bad entry."""
    out: dict[str, int] = {}
    bad: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, n = part.partition("=")
        name, n = name.strip(), n.strip()
        if not eq or not OWNER_RE.fullmatch(name) or not n.isdigit() or int(n) > 1_000_000:
            bad.append(repr(part[:80]))
            continue
        if name in out:
            bad.append(f"{name!r} given twice")
        out[name] = int(n)
    if bad:
        raise ValueError(f"owner limits: expected owner=N entries (owner [A-Za-z0-9._@-]{{1,64}}, N an integer "
                         f"0..1000000) separated by commas; bad: {', '.join(bad)}")
    return out


@dataclass(frozen=True)
class FairPolicy:
    """How a worker chooses among queued jobs (see the module docstring); built from WorkerSettings."""

    head_max: int = 256
    half_life_s: float = 3600.0
    max_running: int | None = None
    limits: dict[str, int] = field(default_factory=dict)
    claim_ttl_s: float = 30.0
    scan_max: int = 10_000  # running jobs and reservations one pop reads at most
    poll_s: float = 0.5  # how long a worker waits when every queued job's owner is at its limit

    def limit_for(self, owner: str) -> int | None:
        """The most jobs ``owner`` may run at once (None: no limit)."""
        return self.limits.get(owner, self.max_running)

    def to_json(self) -> str:
        """What the workers enforce, stored for readers (``traind status`` explains a limit with it)."""
        return json.dumps({"max_running": self.max_running, "limits": dict(sorted(self.limits.items())),
                           "half_life_s": self.half_life_s, "head_max": self.head_max}, separators=(",", ":"))

    @classmethod
    def from_settings(cls, s: Any) -> FairPolicy:
        return cls(head_max=s.fair_head_max, half_life_s=s.fair_half_life_s, max_running=s.owner_max_running,
                   limits=dict(s.owner_limits), claim_ttl_s=max(30.0, 6 * s.lease_ttl_s),
                   poll_s=min(s.dequeue_timeout_s, 0.5))


def fair_pop(r: Any, queue_keys: list[str], policy: FairPolicy) -> PopResult:
    """One atomic choice over ``queue_keys`` (RQ list keys in pop order): ``("take", queue key, rq id, owner)``,
    ``("blocked", None, None, None)`` or ``("empty", None, None, None)``."""
    script = r.register_script(FAIR_POP)
    res = script(keys=[keys.LEASES, keys.FAIR_CLAIMING, keys.IDX_PREFIX, keys.FAIR_POLICY, *queue_keys],
                 args=[policy.head_max, max(1, int(policy.half_life_s * 1000)),
                       -1 if policy.max_running is None else policy.max_running, json.dumps(policy.limits),
                       int(policy.claim_ttl_s * 1000), policy.scan_max, policy.to_json(), keys.job("")])
    kind = _s(res[0])
    if kind == "take":
        return "take", _s(res[1]), _s(res[2]), _s(res[3])
    return ("blocked" if kind == "blocked" else "empty"), None, None, None


def read_policy(r: Any) -> dict[str, Any]:
    """The limits the workers last enforced (``{}`` when no fair-share worker ran, or the value is unreadable)."""
    try:
        raw = r.get(keys.FAIR_POLICY)
        d = json.loads(raw[:10_000]) if isinstance(raw, bytes) else {}
    except (redis.ResponseError, ValueError, TypeError, RecursionError):  # a planted value: no policy shown
        return {}
    return d if isinstance(d, dict) else {}


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def owners_at_limit(r: Any, owners: set[str]) -> set[str]:
    """Those of ``owners`` running as many jobs as the limits the workers enforce (:func:`read_policy`) allow: a
    worker's pop skips their jobs, so nothing should be preempted for one of them (daemon/preemptor.py). One GET and
    one HMGET of the per-owner counts; a job popped and not yet claimed is not counted here (the pop counts it)."""
    policy = read_policy(r)
    limits = policy.get("limits") if isinstance(policy.get("limits"), dict) else {}
    default = policy.get("max_running")
    names = sorted(owners)
    capped = {o: limits.get(o, default) for o in names}
    capped = {o: n for o, n in capped.items() if isinstance(n, int) and not isinstance(n, bool)}
    if not capped:
        return set()
    try:
        counts = r.hmget(keys.IDX_OWNER_COUNTS, [f"running\t{o}" for o in capped])
    except redis.ResponseError:  # a planted key of another type: no owner is known to be at its limit
        return set()
    return {o for (o, n), c in zip(capped.items(), counts) if to_int(c) >= n}
