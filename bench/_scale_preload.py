"""Preloading finished jobs for ``bench.scale``, fast, through the store's own scripts so the layout is real.

Each job is what a worker leaves behind, written by the same Lua scripts with the same KEYS/ARGV as
:class:`jobs.redis.store.JobStore` (``create``, ``transition`` to running with a token as ``RedisLedger.claim``,
one ``fenced_update`` holding the attempt's history of 50-100 epochs, its epoch and checkpoint events and the last
three checkpoint manifests, and the final fenced ``transition``), only pipelined: a few hundred jobs per round
trip. ``tests/test_bench_scale.py`` checks that a preloaded job reads exactly like one written call by call.

>>> # preload(store, client, 10_000, start=0)  # 10,000 more finished jobs
"""

from __future__ import annotations

import json
import random
import secrets
from typing import Any

from jobs.alerts.kinds import OUTBOX_MAXLEN, alert_of
from jobs.contract import keys
from jobs.contract.events import EventKind, event, kind_for_state
from jobs.contract.ids import new_job_id
from jobs.contract.states import TERMINAL, JobState, allowed_sources
from jobs.redis.store import JobStore, _fields_json

_TERMINAL = json.dumps(sorted(s.value for s in TERMINAL))
_RUNNING_FROM = json.dumps(allowed_sources(JobState.RUNNING))
CHUNK = 200


def _history(epochs: int, rng: random.Random) -> dict[str, str]:
    """epoch -> entry JSON, full-precision floats as Keras logs them."""
    out = {}
    for e in range(1, epochs + 1):
        loss = 1.0 / e + rng.random() * 0.01
        entry = {"epoch": e, "loss": loss, "mae": loss * 0.71, "val_loss": loss * 1.09, "val_mae": loss * 0.77,
                 "learning_rate": 0.001, "time_s": round(1.5 + rng.random(), 4)}
        out[str(e)] = json.dumps(entry)
    return out


def _events(epochs: int) -> list[dict[str, Any]]:
    evs = [event(EventKind.NOTE, "attempt 1 on scale-w: starting at epoch 0")]
    for e in range(1, epochs + 1):
        evs.append(event(EventKind.EPOCH, f"epoch {e}: val_loss improved from 0.{e:04d} to 0.{e + 1:04d}; "
                                          "checkpointing it as best", epoch=e, improved=True))
    return evs


class Templates:
    """A few (history, events) payload parts reused across jobs: building 100 entries per job dominated."""

    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.parts = []
        for k in range(8):
            epochs = 50 + k * 7  # 50..99
            h = _history(epochs, rng)
            self.parts.append((epochs, json.dumps(h), json.dumps(_events(epochs))))


def _payload(part: tuple[int, str, str], job_id: str) -> str:
    epochs, hist, evs = part
    ckpts = {}
    for e in range(max(1, epochs - 2), epochs + 1):
        key = e * 1_000_000
        ckpts[str(key)] = json.dumps({"key": key, "file": f"jobs/{job_id}/ckpt/e{e:05d}-b000000-a1.npz",
                                      "sha256": secrets.token_hex(32), "size": 48_211, "epoch": e, "batch": 0,
                                      "attempt": 1})
    fields = {"epoch": str(epochs), "batch": "0", "steps": "100", "running_epoch": str(epochs),
              "best_epoch": str(epochs), "best_value": repr(1.0 / epochs), "progress_timeout_s": "600",
              "progress_seq": str(epochs * 3), "latest_ckpt_key": str(epochs * 1_000_000),
              "best_ckpt_key": str(epochs * 1_000_000), "batch_metrics": '{"loss": 0.01}',
              "metrics": json.dumps({"loss": 1.0 / epochs, "val_loss": 1.09 / epochs}, separators=(",", ":"))}
    return ('{"fields":' + json.dumps(fields) + ',"history_set":' + hist + ',"ckpt_set":' + json.dumps(ckpts)
            + ',"events":' + evs + "}")


def preload(store: JobStore, base_fields: dict[str, Any], n: int, start: int = 0,
            templates: Templates | None = None) -> int:
    """Write ``n`` finished jobs (named ``scale-run-<start+i>``), every 16th failed (a page of 50 fills at 1,000
    jobs: 1k and 100k answer the same rows) and every 97th cancelled, the rest succeeded; returns
    how many were written. ``base_fields`` is ``Client._fields`` of a validated spec."""
    t = templates or Templates()
    r = store.r
    done = 0
    for lo in range(start, start + n, CHUNK):
        pipe = r.pipeline(transaction=False)
        ids = []
        for i in range(lo, min(lo + CHUNK, start + n)):
            jid = new_job_id()
            ids.append(jid)
            fields = {**base_fields, "id": jid, "name": f"scale-run-{i}"}
            store._create(keys=[keys.job(jid), keys.no_idempotency(jid), keys.JOBS_INDEX, keys.state_index(""),
                                keys.PENDING, keys.events(jid), keys.IDX_PREFIX],
                          args=[jid, _fields_json(fields), "", json.dumps(event(EventKind.SUBMITTED, "submitted"))],
                          client=pipe)
            token = secrets.token_hex(16)
            _transition(store, pipe, jid, JobState.RUNNING, _RUNNING_FROM, "1", "",
                        {"token": token, "worker": "scale-w", "cancel_requested": None, "error": None}, "", 5000)
            store._fenced(keys=[keys.job(jid), keys.history(jid), keys.checkpoints(jid), keys.events(jid)],
                          args=[token, _payload(t.parts[i % len(t.parts)], jid), store.events_max,
                                store.max_history], client=pipe)
            end = JobState.FAILED if i % 16 == 15 else JobState.CANCELLED if i % 97 == 96 else JobState.SUCCEEDED
            ev = json.dumps(event(kind_for_state(end), f"{end.value} after training", "info", state=end.value))
            extra = {"error": "ValueError: simulated failure"} if end is JobState.FAILED else {}
            _transition(store, pipe, jid, end, json.dumps(allowed_sources(end)), "", token, extra, ev, 0)
        for res in pipe.execute():
            if not isinstance(res, list) or res[0] not in (1, b"ok"):  # CREATE/FENCED: 1, TRANSITION: "ok"
                raise RuntimeError(f"preload: a script refused a write: {res!r}")
        done += len(ids)
    return done


def _transition(store: JobStore, pipe: Any, jid: str, to: JobState, sources: str, attempt: str, token: str,
                fields: dict[str, Any], ev: str, lease_ttl_ms: int) -> None:
    """``JobStore.transition``'s script call (same KEYS and ARGV), queued on ``pipe``."""
    alert = (alert_of(json.loads(ev)) or "") if ev else ""
    store._transition(keys=[keys.job(jid), keys.LEASES, keys.PENDING, keys.events(jid), keys.state_index(""),
                            keys.IDX_PREFIX, keys.ALERTS_OUTBOX],
                      args=[jid, to.value, sources, _TERMINAL, attempt, token, _fields_json(fields), ev,
                            store.events_max, "", int(lease_ttl_ms), alert, OUTBOX_MAXLEN], client=pipe)
