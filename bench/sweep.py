"""A hyperparameter search, KerasTuner's Hyperband (one process) against a traind sweep (2 workers, Optuna TPE and a
pruner: ``PRUNER``), on the same space (learning rate log-uniform, units), data, paced model (every batch sleeps, so
that parallelism shows on a small machine) and budget (at most 9 epochs a trial; traind runs the issue's 20 trials,
more than the configurations KerasTuner tries). Reported: best val_loss found, epochs trained in all, wall time; then
the same search with a SIGKILL mid-search: KerasTuner's process (it resumes with ``overwrite=False`` and reruns the
trial in progress from its start) against one of traind's two workers (its trial resumes from its checkpoint on the
other worker). Also the CPU that driving the traind sweep used: the supervisor's (an upper bound of the
controller's: it supervises too) plus the workers' reports to the study and pruning decisions at each epoch end
(``sweep:<id>:report_cpu``).

    python -m bench.sweep [--smoke] [--json PATH]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import _util as u

NAME = "sweep"
# The traind sweep's pruner (see docs/benchmarks.md, section 12, for why these settings).
PRUNER = {"type": "successive_halving", "min_resource": 1, "reduction_factor": 4}
CFG = {
    "full": {"n": 2000, "noise": 0.5, "batch_size": 64, "validation_split": 0.3, "batch_delay_s": 0.04, "epochs": 9,
             "factor": 3, "seed": 1, "lr_low": 1e-4, "lr_high": 0.3, "units_low": 4, "units_high": 64,
             "kill_at_fraction": 0.4, "trials": 20, "pruner": PRUNER},
    "smoke": {"n": 400, "noise": 0.5, "batch_size": 64, "validation_split": 0.3, "batch_delay_s": 0.005, "epochs": 3,
              "factor": 3, "seed": 1, "lr_low": 1e-4, "lr_high": 0.3, "units_low": 4, "units_high": 16,
              "kill_at_fraction": 0.4, "trials": 6, "pruner": PRUNER},
}


# -- KerasTuner ------------------------------------------------------------------------------------------------------
def _epochs_logged(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def kerastuner(run: u.Run, c: dict[str, Any], tag: str, kill_after_epochs: int | None = None) -> dict[str, Any]:
    """KerasTuner's search in a child process; with ``kill_after_epochs`` it is SIGKILLed once that many epochs
    were logged and started again on the same directory."""
    d = run.dir / f"kt-{tag}"
    d.mkdir()
    procs = u.Procs(run.dir / "logs")
    run.on_exit(procs.close)
    cmd = [sys.executable, "-m", "bench._sweep_kt", str(d), json.dumps(c)]
    p = procs.start(cmd, name=f"kt-{tag}")
    first_pid = None
    killed_at: float | None = None
    if kill_after_epochs is not None:
        u.wait_for(lambda: len(_epochs_logged(d / "epochs.jsonl")) >= kill_after_epochs or p.poll() is not None,
                   1800, "KerasTuner epochs before the kill", 0.05)
        first_pid = p.pid
        killed_at = time.time()
        procs.kill(p)
        p.wait(30)
        p = procs.start(cmd, name=f"kt-{tag}-again")
    if p.wait(3600) != 0:
        raise RuntimeError(f"KerasTuner exited with {p.returncode}:\n{u.log_tail(p)}")
    res = json.loads((d / "result.json").read_text())
    # Search time, as for traind (whose workers are warm): from the first search's start to the kill, plus the
    # resumed search; the processes' start-up (a TensorFlow import each) is left out.
    wall = res["search_s"]
    if killed_at is not None:
        first = json.loads((d / "search_started.jsonl").read_text().splitlines()[0])
        wall += killed_at - first["t0"]
    log = _epochs_logged(d / "epochs.jsonl")
    out = {"tool": "KerasTuner Hyperband (1 process)", "best_val_loss": res["best_score"],
           "best_params": res["best_params"], "epochs_trained": len(log), "wall_s": round(wall, 1),
           "configurations": sum(1 for t in res["trials"] if not t["from_trial"]), "trials": len(res["trials"])}
    if first_pid is not None:
        before = [e for e in log if e["pid"] == first_pid]
        after = [e for e in log if e["pid"] != first_pid]
        reached: dict[str, int] = {}
        for e in before:
            reached[e["trial"]] = max(reached.get(e["trial"], 0), e["epoch"])
        initial = {t["trial"]: t["initial_epoch"] or 0 for t in res["trials"]}
        redone = [e for e in after if e["trial"] in reached and e["epoch"] <= reached[e["trial"]]]
        restarted = {e["trial"] for e in after
                     if e["trial"] in reached and e["epoch"] == initial.get(e["trial"], 0) + 1}
        out.update({"killed_after_epochs": len(before), "trials_restarted_from_scratch": len(restarted),
                    "epochs_redone": len(redone)})
    return out


# -- traind ----------------------------------------------------------------------------------------------------------
def sweep_spec(c: dict[str, Any], trials: int) -> dict[str, Any]:
    return {
        "name": "bench-sweep",
        "job": {
            "name": "bench-sweep",
            "model": {"builder": "bench.models:slow_mlp",
                      "builder_kwargs": {"dim": 4, "units": 16, "batch_delay_s": c["batch_delay_s"],
                                         "learning_rate": 0.01}},
            "data": {"loader": "bench.models:regression_data",
                     "loader_kwargs": {"n": c["n"], "dim": 4, "noise": c["noise"]}},
            "fit": {"epochs": c["epochs"], "batch_size": c["batch_size"], "validation_split": c["validation_split"],
                    "seed": c["seed"]},
            "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True},
        },
        "space": {"model.builder_kwargs.learning_rate": {"type": "float", "low": c["lr_low"], "high": c["lr_high"],
                                                          "log": True},
                  "model.builder_kwargs.units": {"type": "int", "low": c["units_low"], "high": c["units_high"]}},
        "sampler": {"type": "tpe", "seed": c["seed"]},
        "pruner": c["pruner"],
        "trials": trials,
        "parallel": 2,
    }


def _epoch_events(r: Any, job_id: str) -> list[dict[str, Any]]:
    from jobs.contract import keys
    return [ev for ev in (json.loads(x) for x in r.lrange(keys.events(job_id), 0, -1)) if ev.get("kind") == "epoch"]


def traind(run: u.Run, c: dict[str, Any], trials: int, tag: str, kill_after_epochs: int | None = None
           ) -> dict[str, Any]:
    """A traind sweep on a fresh stack: 1 supervisor (it drives the sweep), 2 workers; with ``kill_after_epochs``
    the worker of a trial in mid-epoch is SIGKILLed once that many epochs were trained (no spare is started)."""
    import psutil

    from jobs.contract import keys
    from jobs.sweep.records import SweepStore, status, sweep_key
    from jobs.sweep.spec import validate_sweep

    url, storage, procs, client = u.start_stack(run)
    r = client.r
    pool = u.Pool(procs, r, url, storage)
    workers = [pool.spawn(f"{tag}-w{i}") for i in range(2)]
    sup = procs.supervisor(url, storage)
    for w in workers:
        pool.wait_warm(w)
    sweep, job = validate_sweep(sweep_spec(c, trials), allowed_modules=u.ALLOWED.split(","))
    store = SweepStore(r)
    t0 = time.monotonic()
    cpu0 = psutil.Process(sup.pid).cpu_times()
    sweep_id = store.create(sweep.model_dump(mode="json"), job.model_dump(mode="json"), sweep.direction(job),
                            sweep.objective_metric(job))

    def trained() -> int:
        return sum(len(_epoch_events(r, t["job"])) for t in status(store, sweep_id)["trials"] if t["job"])

    kill: dict[str, Any] = {}
    if kill_after_epochs is not None:
        u.wait_for(lambda: trained() >= kill_after_epochs, 1800, "epochs before the kill", 0.1)

        def mid_epoch() -> tuple[str, Any] | None:
            st = status(store, sweep_id)
            if st["state"] != "running":
                return "", None  # the sweep ended before any trial was in mid-epoch: no kill (reported)
            for t in st["trials"]:
                names = ["state", "batch", "steps", "epoch"]
                f = dict(zip(names, r.hmget(keys.job(t["job"] or "-"), names)))
                done = int(f["epoch"] or 0)  # a trial with a committed epoch-end checkpoint: resumable
                if (f["state"] == b"running" and 0 < int(f["batch"] or 0) < int(f["steps"] or 1) - 1 and done >= 1
                        and done * 10**6 in client.store.checkpoints(t["job"])):
                    p = pool.runner(t["job"])
                    if p is not None:
                        return t["job"], p
            return None

        job_id, victim = u.wait_for(mid_epoch, 600, "a trial in mid-epoch", 0.02)
        if victim is not None:
            ep, batch, steps = (int(v or 0) for v in r.hmget(keys.job(job_id), "epoch", "batch", "steps"))
            pool.kill(victim)
            kill = {"job": job_id, "epoch_done": ep, "partial": batch / steps if steps else 0.0}
    st = u.wait_for(lambda: (lambda s: s if s["state"] != "running" else None)(status(store, sweep_id)), 3600,
                    "the sweep to finish", 0.5)
    wall = time.monotonic() - t0
    cpu1 = psutil.Process(sup.pid).cpu_times()
    sup_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    report_cpu = sum(float(v) for v in r.hvals(sweep_key(sweep_id, "report_cpu")))
    epochs = {t["job"]: _epoch_events(r, t["job"]) for t in st["trials"] if t["job"]}
    pruner = c["pruner"]["type"].replace("_", " ")
    out = {"tool": f"traind sweep (2 workers, TPE + {pruner} pruner)", "best_val_loss": (st["best"] or {}).get("value"),
           "best_params": {k.rsplit(".", 1)[-1]: v for k, v in ((st["best"] or {}).get("params") or {}).items()},
           "epochs_trained": sum(len(v) for v in epochs.values()), "wall_s": round(wall, 1),
           "configurations": len(st["trials"]), "trials": len(st["trials"]),
           "pruned": sum(1 for t in st["trials"] if t["pruned"]), "state": st["state"],
           # Epochs a pruned trial finished after the one the pruner stopped it at (0: each stopped at that epoch's
           # end, its worker having asked the pruner there).
           "epochs_after_prune": sum(len(epochs.get(t["job"], [])) - (t["pruned_at"] or 0)
                                     for t in st["trials"] if t["pruned"]),
           "supervisor_cpu_pct_of_one_core": round(100 * sup_cpu / wall, 2),
           "report_cpu_s": round(report_cpu, 2),
           "driving_cpu_pct_of_one_core": round(100 * (sup_cpu + report_cpu) / wall, 2)}
    if kill_after_epochs is not None and not kill:
        out["killed_after_epochs"] = "no kill: no trial was in mid-epoch before the sweep ended"
    if kill:
        from jobs.contract.events import EventKind
        evs = [json.loads(x) for x in r.lrange(keys.events(kill["job"]), 0, -1)]
        resumed = [e for e in evs if e.get("kind") == EventKind.RESUMED.value]
        scratch = [e for e in evs if e.get("kind") == EventKind.NO_CHECKPOINT.value] or (
            [] if resumed else [e for e in evs if e.get("kind") == EventKind.TRAINING.value and e.get("attempt") == 2])
        e = int(resumed[0]["epoch"]) if resumed else 0
        ts = [ev["ts"] for ev in epochs[kill["job"]] if ev.get("attempt", 1) == 1 and "ts" in ev]
        epoch_s = statistics.median(b - a for a, b in zip(ts, ts[1:])) / 1000 if len(ts) > 1 else None
        lost_epochs = kill["epoch_done"] - e + kill["partial"]
        out.update({"killed_after_epochs": kill_after_epochs, "trials_restarted_from_scratch": 1 if scratch else 0,
                    "epochs_redone": kill["epoch_done"] - e, "resumed_at_epoch": e,
                    "killed_at": f"epoch {kill['epoch_done']} + {kill['partial']:.2f}",
                    "training_lost_s": round(lost_epochs * epoch_s, 2) if epoch_s else None})
    return out


def body(run: u.Run) -> None:
    c = CFG["smoke" if run.args.smoke else "full"]
    kt_clean = kerastuner(run, c, "clean")
    print(f"  KerasTuner: {kt_clean}", flush=True)
    trials = c["trials"]
    td_clean = traind(run, c, trials, "clean")
    print(f"  traind: {td_clean}", flush=True)
    kill_at = max(1, int(kt_clean["epochs_trained"] * c["kill_at_fraction"]))
    kt_kill = kerastuner(run, c, "kill", kill_after_epochs=kill_at)
    print(f"  KerasTuner killed: {kt_kill}", flush=True)
    td_kill = traind(run, c, trials, "kill", kill_after_epochs=max(1, int(td_clean["epochs_trained"]
                                                                          * c["kill_at_fraction"])))
    print(f"  traind killed: {td_kill}", flush=True)
    cols = ["tool", "best_val_loss", "epochs_trained", "wall_s", "configurations", "trials"]
    run.table(f"same space and budget (max {c['epochs']} epochs a trial; traind: {trials} trials), no failure",
              [kt_clean, td_clean], cols)
    run.table("the same search with a SIGKILL mid-search (KerasTuner: its process; traind: one of 2 workers)",
              [kt_kill, td_kill], [*cols, "killed_after_epochs", "trials_restarted_from_scratch", "epochs_redone"])
    run.table("traind: the killed trial, pruning, the controller's cost",
              [{k: v for k, v in d.items() if k in ("tool", "pruned", "epochs_after_prune", "killed_at",
                                                     "resumed_at_epoch", "training_lost_s",
                                                     "supervisor_cpu_pct_of_one_core", "report_cpu_s",
                                                     "driving_cpu_pct_of_one_core")}
               for d in (td_clean, td_kill)])
    run.results.update({"config": c, "kerastuner": kt_clean, "traind": td_clean, "kerastuner_kill": kt_kill,
                        "traind_kill": td_kill})


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
