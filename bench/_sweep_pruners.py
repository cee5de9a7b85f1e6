"""bench/sweep.py's pruner settings, estimated offline: Optuna TPE (as the sweep controller builds it) with a pruner, on
bench/sweep.py's space, data and model without its pacing, 20 trials, two in flight stepped an epoch at a time, in
one process (no traind). Prints epochs trained and best val_loss per pruner and TPE seed: how the settings in
``bench.sweep.PRUNER`` were chosen (docs/benchmarks.md, section 12). Takes ~1 min a run on an idle core.

    python -m bench._sweep_pruners [NAME,NAME...] [SEED,SEED...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

PRUNERS: dict[str, Callable[[], Any]] = {
    "hyperband_1_3": lambda: _optuna().pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3),
    "hyperband_1_9": lambda: _optuna().pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=9),
    "sh_1_2": lambda: _optuna().pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    "sh_1_3": lambda: _optuna().pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "sh_1_4": lambda: _optuna().pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4),
    "sh_1_9": lambda: _optuna().pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=9),
    "median_2": lambda: _optuna().pruners.MedianPruner(n_startup_trials=2),
}


def _optuna() -> Any:
    import optuna

    return optuna


def run(pruner: Any, seed: int, trials: int = 20, parallel: int = 2, epochs: int = 9) -> dict[str, Any]:
    """One search; the last epoch is never pruned (as in traind)."""
    import keras
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from bench.models import regression_data, slow_mlp
    from bench.sweep import CFG

    c = CFG["full"]
    x, y = regression_data(n=c["n"], dim=4, noise=c["noise"])
    split = int(len(x) * (1 - c["validation_split"]))
    dists = {"lr": FloatDistribution(c["lr_low"], c["lr_high"], log=True),
             "units": IntDistribution(c["units_low"], c["units_high"])}
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=min(10, trials))
    study = optuna.create_study(sampler=sampler, pruner=pruner)
    active: list[list[Any]] = []
    asked = trained = 0
    while asked < trials or active:
        while len(active) < parallel and asked < trials:
            t = study.ask(dists)
            asked += 1
            keras.utils.set_random_seed(seed)
            active.append([t, slow_mlp(dim=4, units=t.params["units"], batch_delay_s=0.0,
                                       learning_rate=t.params["lr"]), 0, []])
        for a in list(active):
            t, model, e, values = a
            h = model.fit(x[:split], y[:split], batch_size=c["batch_size"], epochs=e + 1, initial_epoch=e,
                          validation_data=(x[split:], y[split:]), verbose=0)
            a[2] = e = e + 1
            values.append(float(h.history["val_loss"][-1]))
            trained += 1
            t.report(values[-1], e)
            if e >= epochs:
                study.tell(t, min(values))
                active.remove(a)
            elif t.should_prune():
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
                active.remove(a)
    done = [t.value for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    return {"epochs": trained, "best": round(min(done), 4) if done else None,
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials)}


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    names = argv[0].split(",") if argv else list(PRUNERS)
    seeds = [int(s) for s in argv[1].split(",")] if len(argv) > 1 else [1]
    for name in names:
        for seed in seeds:
            print(name, seed, run(PRUNERS[name](), seed), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
