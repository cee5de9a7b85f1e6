"""Where a job's wall time went: queued, starting, productive training, checkpoint stall, work redone after a
failure, detection and restart. Pure: computed from the job's events (each with its Redis ``ts`` in ms).

- **queued**: submission to the first claim.
- **starting**: the first claim to the first ``training`` event (imports, model build, data, resume).
- **training** time of each attempt is split into **productive**, **checkpoint** (the training thread's checkpoint
  stalls, ``stall_s``, summed over attempts) and
  **redone**: the training an attempt lost when it ended without saving it (from the checkpoint the next attempt
  resumed from, ``saved_ms`` of its ``resumed`` event, to the moment it was lost), trained again later.
- **detection**: from the moment an attempt was lost (its last sign of life: the hang's start for ``hung``, the last
  lease renewal for ``requeued``: ``lost_at_ms``, else the event's time minus one lease TTL) to its requeue.
- **restart**: from the requeue to the next attempt's ``training`` event (queue wait, claim, build, resume).

The parts sum to the wall time (submission to the final state, or ``now_ms`` while the job runs).

>>> evs = [{"kind": "submitted", "ts": 0}, {"kind": "claimed", "ts": 1000}, {"kind": "training", "ts": 3000},
...        {"kind": "requeued", "ts": 60000, "lost_at_ms": 55000}, {"kind": "claimed", "ts": 61000},
...        {"kind": "resumed", "ts": 62000, "saved_ms": 50000}, {"kind": "training", "ts": 63000},
...        {"kind": "succeeded", "ts": 100000}]
>>> g = account(evs, stall_s=1.0)
>>> (g.queued_s, g.starting_s, g.redone_s, g.detection_s, g.restart_s, g.checkpoint_s, g.productive_s)
(1.0, 2.0, 5.0, 5.0, 3.0, 1.0, 83.0)
>>> g.wall_s, round(g.ratio, 2)
(100.0, 0.83)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

REASONS = ("queued", "starting", "checkpoint", "redone", "detection", "restart")  # badput; productive is the rest
_LOST = ("requeued", "hung", "preempted")
_END = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Goodput:
    """A job's wall time by what it was spent on (seconds); ``ratio`` is productive / wall."""

    wall_s: float
    queued_s: float
    starting_s: float
    productive_s: float
    checkpoint_s: float
    redone_s: float
    detection_s: float
    restart_s: float

    @property
    def ratio(self) -> float:
        return self.productive_s / self.wall_s if self.wall_s > 0 else 0.0

    def badput(self) -> dict[str, float]:
        """Seconds per badput reason (every part but productive)."""
        return {r: getattr(self, f"{r}_s") for r in REASONS}

    def to_dict(self) -> dict[str, float]:
        d = {k: round(v, 3) for k, v in asdict(self).items()}
        d["ratio"] = round(self.ratio, 4)
        return d


def _ms(ev: Mapping[str, Any], field: str) -> float | None:
    v = ev.get(field)
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def account(events: Iterable[Mapping[str, Any]], *, stall_s: float = 0.0, now_ms: float | None = None,
            lease_ttl_s: float = 5.0) -> Goodput:
    """Split the wall time of a job with these ``events`` (see the module doc). Events without a usable ``ts`` are
    ignored; the first event's time is the submission when there is no ``submitted`` event."""
    evs = sorted((e for e in events if _ms(e, "ts") is not None), key=lambda e: float(e["ts"]))
    if not evs:
        return Goodput(0, 0, 0, 0, 0, 0, 0, 0)
    parts = dict.fromkeys(("queued", "starting", "training", "redone", "detection", "restart"), 0.0)
    start = float(evs[0]["ts"])
    phase, since = "queued", start
    train_start: float | None = None  # the current (or last lost) attempt's training start
    lost_at: float | None = None
    end = start
    for ev in evs:
        kind, ts = ev.get("kind"), float(ev["ts"])
        end = ts
        if kind == "claimed" and phase == "queued":
            parts["queued"] += ts - since
            phase, since = "starting", ts
        elif kind == "training" and phase in ("queued", "starting", "restart"):
            parts[phase] += ts - since
            phase, since, train_start = "training", ts, ts
        elif kind in _LOST and phase == "training":
            assert train_start is not None
            if kind == "hung":
                silent = _ms(ev, "silent_s")
                lost = ts - 1000 * silent if silent is not None else ts
            elif kind == "requeued":
                lost = _ms(ev, "lost_at_ms") or ts - 1000 * lease_ttl_s
            else:  # preempted: handed back at once, from a checkpoint at the batch
                lost = ts
            lost = min(max(lost, train_start), ts)
            parts["training"] += lost - since
            parts["detection"] += ts - lost
            phase, since, lost_at = "restart", ts, lost
        elif kind in ("resumed", "no_checkpoint") and lost_at is not None and train_start is not None:
            saved = _ms(ev, "saved_ms") if kind == "resumed" else None
            kept_until = train_start if saved is None else min(max(saved, train_start), lost_at)
            parts["redone"] += lost_at - kept_until
            lost_at = None
        elif kind in _END:
            parts["training" if phase == "training" else phase] += ts - since
            phase, since = "ended", ts
            break
    if phase != "ended":
        end = max(end, now_ms if now_ms is not None else end)
        parts["training" if phase == "training" else phase] += end - since
    # The lost attempt's training not yet covered by a resume (the next attempt has not started): redone too.
    if lost_at is not None and train_start is not None:
        parts["redone"] += lost_at - train_start
    redone = min(parts["redone"] / 1000, parts["training"] / 1000)
    training = parts["training"] / 1000 - redone
    checkpoint = min(max(stall_s, 0.0), training)
    return Goodput(
        wall_s=(end - start) / 1000, queued_s=parts["queued"] / 1000, starting_s=parts["starting"] / 1000,
        productive_s=training - checkpoint, checkpoint_s=checkpoint, redone_s=redone,
        detection_s=parts["detection"] / 1000, restart_s=parts["restart"] / 1000,
    )


def fleet(goodputs: Iterable[Goodput]) -> tuple[float, dict[str, float]]:
    """The fleet's goodput ratio (productive over wall, summed over jobs) and badput seconds per reason.

    >>> fleet([Goodput(10, 1, 1, 8, 0, 0, 0, 0), Goodput(10, 0, 0, 10, 0, 0, 0, 0)])[0]
    0.9
    """
    wall = productive = 0.0
    badput = dict.fromkeys(REASONS, 0.0)
    for g in goodputs:
        wall += g.wall_s
        productive += g.productive_s
        for r, v in g.badput().items():
            badput[r] += v
    return (productive / wall if wall > 0 else 0.0), badput
