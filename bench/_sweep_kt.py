"""bench/sweep.py's KerasTuner side, run as a child process (so that it can be SIGKILLed and started again):

    python -m bench._sweep_kt DIR CONFIG_JSON

KerasTuner's Hyperband over the same space, data and paced model as the traind sweep, in one process. Every finished
epoch appends ``{"pid", "trial", "epoch"}`` to ``DIR/epochs.jsonl`` (flushed: a kill loses none); at the end
``DIR/result.json`` holds the best score and every trial. Started again on the same DIR it resumes the search the way
KerasTuner does (``overwrite=False``: the trial that was running is retried).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    workdir, cfg = Path(argv[0]), json.loads(argv[1])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import keras_tuner as kt

    from bench.models import regression_data, slow_mlp

    current: list[str] = [""]
    log = open(workdir / "epochs.jsonl", "a", buffering=1)

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            log.write(json.dumps({"pid": os.getpid(), "trial": current[0], "epoch": epoch + 1, "t": time.time(),
                                  "val_loss": (logs or {}).get("val_loss")}) + "\n")

    class Tuner(kt.Hyperband):
        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
            current[0] = trial.trial_id
            return super().run_trial(trial, *args, **kwargs)

        def _configure_tensorboard_dir(self, callbacks: Any, trial: Any, execution: int = 0) -> None:
            pass  # no TensorBoard callback here, and KerasTuner imports the tensorboard package for it regardless

    def build(hp: Any) -> Any:
        lr = hp.Float("learning_rate", cfg["lr_low"], cfg["lr_high"], sampling="log")
        units = hp.Int("units", cfg["units_low"], cfg["units_high"])
        return slow_mlp(dim=4, units=units, batch_delay_s=cfg["batch_delay_s"], learning_rate=lr)

    tuner = Tuner(build, objective="val_loss", max_epochs=cfg["epochs"], factor=cfg["factor"],
                  hyperband_iterations=1, seed=cfg["seed"], directory=str(workdir), project_name="kt",
                  overwrite=False)
    x, y = regression_data(n=cfg["n"], dim=4, noise=cfg["noise"])
    t0 = time.time()
    with open(workdir / "search_started.jsonl", "a") as f:  # one line per process (bench/sweep.py: killed runs)
        f.write(json.dumps({"pid": os.getpid(), "t0": t0}) + "\n")
    tuner.search(x, y, validation_split=cfg["validation_split"], batch_size=cfg["batch_size"], shuffle=True,
                 callbacks=[EpochLog()], verbose=0)
    trials = []
    for t in tuner.oracle.trials.values():
        v = t.hyperparameters.values
        trials.append({"trial": t.trial_id, "status": str(t.status), "score": t.score,
                       "epochs": v.get("tuner/epochs"), "initial_epoch": v.get("tuner/initial_epoch"),
                       "from_trial": v.get("tuner/trial_id"), "learning_rate": v.get("learning_rate"),
                       "units": v.get("units")})
    best = tuner.oracle.get_best_trials(1)[0]
    (workdir / "result.json").write_text(json.dumps({"search_s": time.time() - t0,
                                                     "best_score": best.score, "best_trial": best.trial_id,
                                                     "best_params": {k: best.hyperparameters.values[k] for k in
                                                                     ("learning_rate", "units")},
                                                     "trials": trials}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
