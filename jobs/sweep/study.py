"""The Optuna side of a sweep: its study lives in traind's Redis as an Optuna journal; samplers and pruners by name.

The journal uses the key layout of Optuna's ``JournalRedisBackend`` (``<prefix>:log_number``, ``<prefix>:log:<n>``,
each log one JSON document), so Optuna's own tools open it (docs/sweeps.md), but it is written through traind's
connection (password, TLS, sentinels, replica waits) and **never** stores or reads the pickled snapshot that
Optuna's backend keeps next to the logs: no pickle crosses Redis.

Two processes write to a trial: the worker training it (each epoch's report and the pruner's verdict, at the epoch's
end: :mod:`jobs.sweep.reporter`) and the controller (the same reports as a backstop, and the trial's end). The journal
keeps each trial's report for one step, and its end, exactly once whoever writes first (``<prefix>:once``): a
resumed trial redoing an epoch, or both writers at once, add nothing.

>>> # study = open_study(r, sweep_id, "minimize", SamplerSpec(type="tpe"), PrunerSpec(type="median"), epochs=10)
>>> # study.ask({"fit.batch_size": CategoricalDistribution([32, 64])}).params
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import optuna
import redis
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import TrialState

from jobs.sweep.records import study_name, sweep_key
from jobs.sweep.spec import CategoricalParam, FloatParam, PrunerSpec, SamplerSpec, SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial would flood the supervisor's log
_READ_CHUNK = 500

# Append one log atomically: its number and its body together (a controller killed in between leaves no gap).
# With ARGV[3] (a trial's step report or its end), only the first log of that name is appended.
_APPEND = """
if ARGV[3] ~= '' and redis.call('hsetnx', KEYS[2], ARGV[3], 1) == 0 then
  return 0
end
local n = redis.call('incr', KEYS[1])
redis.call('set', ARGV[1] .. ':log:' .. n, ARGV[2])
return n
"""
_FINISHED = (TrialState.COMPLETE.value, TrialState.PRUNED.value, TrialState.FAIL.value)


def once_name(log: dict[str, Any]) -> str:
    """The name under which a log is written at most once ("" for any other log): one report per trial and step,
    one end per trial."""
    op = log.get("op_code")
    if op == JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE:
        return f"iv:{log.get('trial_id')}:{log.get('step')}"
    if op == JournalOperation.SET_TRIAL_STATE_VALUES and log.get("state") in _FINISHED:
        return f"end:{log.get('trial_id')}"
    return ""


class RedisJournal(BaseJournalBackend):
    """Optuna journal logs in traind's Redis (no snapshot support on purpose: Optuna pickles snapshots)."""

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.r = r
        self.prefix = prefix
        self._append = r.register_script(_APPEND)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        last = self.r.get(f"{self.prefix}:log_number")
        if last is None:
            return
        last_n = int(last)
        for start in range(log_number_from, last_n + 1, _READ_CHUNK):
            numbers = range(start, min(start + _READ_CHUNK, last_n + 1))
            for raw in self.r.mget([f"{self.prefix}:log:{n}" for n in numbers]):
                if raw is None:  # cannot happen with the atomic append; stop rather than replay out of order
                    return
                yield json.loads(raw)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.r.setnx(f"{self.prefix}:log_number", -1)  # Optuna's layout: the first log is number 0
        for log in logs:
            self._append(keys=[f"{self.prefix}:log_number", f"{self.prefix}:once"],
                         args=[self.prefix, json.dumps(log), once_name(log)])


def storage(r: redis.Redis, sweep_id: str) -> JournalStorage:
    return JournalStorage(RedisJournal(r, sweep_key(sweep_id, "optuna")))


def distributions(sweep: SweepSpec) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for path, p in sweep.space.items():
        if isinstance(p, CategoricalParam):
            out[path] = CategoricalDistribution(p.choices)
        elif isinstance(p, FloatParam):
            out[path] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            out[path] = IntDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def sampler(sweep: SweepSpec) -> optuna.samplers.BaseSampler:
    s: SamplerSpec = sweep.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.type == "grid":
        return optuna.samplers.GridSampler(sweep.grid(), seed=s.seed)
    # Constant liar: trials in flight count as (pessimistic) results, so `parallel` trials do not all sample one spot.
    return optuna.samplers.TPESampler(seed=s.seed, constant_liar=True, n_startup_trials=min(10, sweep.trials))


def pruner(p: PrunerSpec, epochs: int) -> optuna.pruners.BasePruner:
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=epochs,
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(r: redis.Redis, sweep_id: str, direction: str, sweep: SweepSpec, epochs: int) -> optuna.Study:
    """The sweep's study, created on first use (idempotent: a restarted controller loads the same one)."""
    return optuna.create_study(storage=storage(r, sweep_id), study_name=study_name(sweep_id), direction=direction,
                               sampler=sampler(sweep), pruner=pruner(sweep.pruner, epochs), load_if_exists=True)
