"""Hyperparameter sweeps on traind's queue: every trial is an ordinary traind job; Optuna samples and prunes.

- :mod:`jobs.sweep.spec`: the sweep file (every problem reported at once) and the trial job specs it makes.
- :mod:`jobs.sweep.records`: sweep and trial records in Redis (typed, parsed once here).
- :mod:`jobs.sweep.study`: the Optuna study in traind's Redis (journal storage, no pickle), samplers, pruners.
- :mod:`jobs.sweep.controller`: the stateless ``step(now=...)`` that drives every active sweep (run by supervisors).
"""
