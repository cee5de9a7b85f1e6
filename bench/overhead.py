"""Training overhead: the same job as plain ``model.fit`` (Keras' ModelCheckpoint + EarlyStopping) and through traind.

Part 1 (small model, ~10 s of plain fit): (a) ``model.fit`` with ``ModelCheckpoint(save_best_only,
save_weights_only)`` + ``EarlyStopping(restore_best_weights)`` in a warm process of its own (``bench._plain``:
TensorFlow imported, one untimed fit first); (b) the same spec submitted to a *warm* traind worker
subprocess (TensorFlow imported and one untimed job run before timing), submit -> succeeded. A and B alternate
(A B, B A, ...); medians and the ratio b/a are reported. A third, in-process traind run with timers around the
worker's pieces gives the breakdown of traind's extra time.

The checkpoint-bound part (100 MB and 1 GB models) is :mod:`bench.ckpt_scale`.

    python -m bench.overhead [--smoke] [--json PATH] [--reps N]
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from bench import _util as u
from bench._instrument import Timers

NAME = "overhead"
SMALL = {
    "full": {"n": 40_000, "dim": 32, "units": 128, "depth": 2, "batch": 64, "target_s": 10.0, "reps": 3},
    "smoke": {"n": 1_000, "dim": 4, "units": 8, "depth": 1, "batch": 100, "epochs": 2, "reps": 1},
}
SEED = 3
VAL_SPLIT = 0.2


def _desc(c: dict[str, Any]) -> str:
    return f"{c['dim']}->{c['units']}x{c['depth']}->1 MLP, {c['n']} samples, batch {c['batch']}"


def _model_kw(c: dict[str, Any], lr: float) -> dict[str, Any]:
    return {"dim": c["dim"], "units": c["units"], "depth": c["depth"], "learning_rate": lr}


def _data_kw(c: dict[str, Any]) -> dict[str, Any]:
    return {"n": c["n"], "dim": c["dim"], "seed": 0}


def small_spec(c: dict[str, Any], epochs: int, name: str = "overhead") -> dict[str, Any]:
    return {
        "name": name,
        "model": {"builder": "bench.models:mlp", "builder_kwargs": _model_kw(c, 1e-3)},
        "data": {"loader": "bench.models:regression_data", "loader_kwargs": _data_kw(c)},
        "fit": {"epochs": epochs, "batch_size": c["batch"], "validation_split": VAL_SPLIT, "shuffle": False,
                "seed": SEED},
        "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True},
        # patience = epochs: present (and restoring best weights at the end) but never stopping, so A and B train
        # exactly the same number of epochs
        "early_stopping": {"monitor": "val_loss", "patience": epochs, "restore_best_weights": True},
        "max_restarts": 0,
    }


def big_spec(c: dict[str, Any], improving: bool) -> dict[str, Any]:
    ckpt: dict[str, Any] = {"monitor": "loss", "save_best_only": True, "save_weights_only": True}
    if not improving:
        ckpt["initial_value_threshold"] = 0.0  # never improves: only the async resumable checkpoint is written
    return {
        "name": "overhead-big",
        "model": {"builder": "bench.models:big_dense", "builder_kwargs": _model_kw(c, 1e-5)},
        "data": {"loader": "bench.models:regression_data", "loader_kwargs": _data_kw(c)},
        "fit": {"epochs": c["epochs"], "batch_size": c["batch"], "shuffle": False, "seed": SEED},
        "checkpoint": ckpt,
        "max_restarts": 0,
    }


# -- (a) plain Keras -------------------------------------------------------------------------------------------------
def _epoch_clock() -> Any:
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Epoch boundaries: epoch i lasts from its begin to the next begin (its end hooks included)."""

        def __init__(self) -> None:
            super().__init__()
            self.begins: list[float] = []
            self.end = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.begins.append(time.perf_counter())

        def on_train_end(self, logs: Any = None) -> None:
            self.end = time.perf_counter()

        def epochs(self) -> list[float]:
            b = [*self.begins, self.end]
            return [b[i + 1] - b[i] for i in range(len(self.begins))]

    return EpochClock()


def plain_fit(builder: str, model_kw: dict[str, Any], data_kw: dict[str, Any], epochs: int, batch: int,
              validation_split: float, ckpt_path: Path | str | None, save_best_only: bool = True,
              monitor: str = "val_loss", early_stopping: bool = True,
              extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Build + load + fit in this process with Keras' own callbacks; times from the builder call on.

    ``extra_callbacks``: more Keras callbacks (``bench.ckpt_scale`` adds its host-copy timer).
    """
    import keras

    from bench import models

    with Timers() as t:
        t.wrap(keras.callbacks.ModelCheckpoint, "on_epoch_end", "ckpt")
        t0 = time.perf_counter()
        keras.utils.set_random_seed(SEED)
        model = getattr(models, builder)(**model_kw)
        x, y = models.regression_data(**data_kw)
        clock = _epoch_clock()
        cbs: list[Any] = [clock]
        if ckpt_path is not None:
            cbs.append(keras.callbacks.ModelCheckpoint(str(ckpt_path), monitor=monitor, save_best_only=save_best_only,
                                                       save_weights_only=True))
        cbs += extra_callbacks or []
        if early_stopping:
            cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=epochs, restore_best_weights=True))
        t_fit = time.perf_counter()
        hist = model.fit(x, y, epochs=epochs, batch_size=batch, validation_split=validation_split, shuffle=False,
                         verbose=0, callbacks=cbs)
        t1 = time.perf_counter()
        stalls = t.durations("ckpt")
    out = {"total_s": t1 - t0, "setup_s": t_fit - t0, "fit_s": t1 - t_fit, "epoch_s": clock.epochs(),
           "ckpt_stall_s": stalls, "epochs": len(hist.history["loss"])}
    del model
    _release()
    return out


def _release() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


class PlainProc:
    """``bench._plain`` in a subprocess: plain ``model.fit`` runs in a warm process of their own."""

    def __init__(self, procs: u.Procs) -> None:
        import subprocess
        import sys

        log = open(procs.logdir / "plain.log", "wb")  # owned by the child
        self.p = subprocess.Popen([sys.executable, "-m", "bench._plain"], cwd=u.ROOT, env=u.child_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                  start_new_session=True)
        log.close()
        procs.procs.append(self.p)  # type: ignore[arg-type]
        self._read()

    def _read(self) -> dict[str, Any]:
        import json

        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"bench._plain exited with {self.p.poll()}")
        return json.loads(line)

    def fit(self, **kw: Any) -> dict[str, Any]:
        import json

        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps({**kw, "ckpt_path": str(kw["ckpt_path"]) if kw.get("ckpt_path") else None})
                           + "\n")
        self.p.stdin.flush()
        res = self._read()
        if not res["ok"]:
            raise RuntimeError(f"plain fit failed: {res['error']}")
        return res["result"]


# -- (b) traind ------------------------------------------------------------------------------------------------------
def traind_job(client: Any, spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Submit and poll (10 ms) until terminal; end-to-end wall time plus the job's own Redis timestamps."""
    from jobs.contract import keys
    r = client.r
    t0 = time.perf_counter()
    h = client.submit(spec)
    deadline = t0 + timeout
    while True:
        st = r.hget(keys.job(h.id), "state")
        if st in (b"succeeded", b"failed", b"cancelled"):
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job {h.id} still {st!r} after {timeout} s")
        time.sleep(0.01)
    e2e = time.perf_counter() - t0
    rec = client.store.get(h.id, with_history=True)
    if rec["state"] != "succeeded":
        raise RuntimeError(f"job {h.id} {rec['state']}: {rec.get('error')}")
    hist = rec["history"]
    return {"id": h.id, "e2e_s": e2e, "dequeue_s": (rec["started_at"] - rec["created_at"]) / 1000,
            "train_s": (rec["finished_at"] - rec["started_at"]) / 1000,
            "fit_s": sum(e["time_s"] for e in hist), "epoch_s": [e["time_s"] for e in hist], "epochs": len(hist),
            "best_epoch": rec.get("best_epoch")}


def in_process_traind(worker: Any, client: Any, spec: dict[str, Any]) -> tuple[dict[str, Any], Timers, Any]:
    """Run ``spec`` on an in-process burst worker with timers around its pieces; returns (job, timers, trainer)."""
    import os

    from keras.src.models.model import Model as KerasModel

    import jobs.storage.local as storage_mod  # LocalStorage verifies files with its sha256_file
    import worker.build as build_mod
    import worker.data as data_mod
    import worker.resume as resume_mod
    import worker.runner as runner_mod
    from jobs.redis.store import JobStore
    from worker.checkpoint import Checkpoints
    from worker.checkpointing import CheckpointCallback
    from worker.progress import EpochRecorder, ProgressCallback, StopCallback
    from worker.runner import Worker
    from worker.snapshot import Snapshotter
    from worker.trainer import Trainer

    seen: dict[str, Any] = {}
    orig_init = Trainer.__init__

    def capture(self: Any, *a: Any, **kw: Any) -> None:
        orig_init(self, *a, **kw)
        seen["trainer"] = self

    with Timers() as t:
        Trainer.__init__ = capture  # type: ignore[method-assign]
        try:
            for owner, name in [
                (runner_mod, "pop"), (runner_mod, "_release_memory"), (Worker, "execute"), (Worker, "register"),
                (build_mod, "build_model"), (data_mod, "load"), (Trainer, "run"), (resume_mod, "resume"),
                (Trainer, "_fit"), (EpochRecorder, "on_epoch_end"), (CheckpointCallback, "on_epoch_end"),
                (Snapshotter, "take"), (Checkpoints, "_commit_retaining"),
                (ProgressCallback, "publish"), (Trainer, "_finish"), (Checkpoints, "export"),
                (Checkpoints, "save_async"),
                (Checkpoints, "write"), (Checkpoints, "flush"), (JobStore, "fenced_update"), (JobStore, "heartbeat"),
                (JobStore, "transition"), (StopCallback, "on_train_batch_end"),
                (ProgressCallback, "on_train_batch_end"), (storage_mod, "sha256_file"),
                (os, "fsync"), (KerasModel, "save_weights"), (KerasModel, "save"),
            ]:
                t.wrap(owner, name)
            t_sub = time.perf_counter()
            h = client.submit(spec)
            worker.run()
            wall = time.perf_counter() - t_sub
        finally:
            Trainer.__init__ = orig_init  # type: ignore[method-assign]
    rec = client.store.get(h.id, with_history=True)
    if rec["state"] != "succeeded":
        raise RuntimeError(f"in-process job {h.id} {rec['state']}: {rec.get('error')}")
    rec["wall_s"] = wall
    return rec, t, seen.get("trainer")


# -- part 1 ----------------------------------------------------------------------------------------------------------
def calibrate(c: dict[str, Any], run: u.Run, plain: PlainProc) -> int:
    """Epochs for ~target_s of plain fit, from a 3-epoch probe (epochs 2-3 timed)."""
    probe = plain.fit(builder="mlp", model_kw=_model_kw(c, 1e-3), data_kw=_data_kw(c), epochs=3, batch=c["batch"],
                      validation_split=VAL_SPLIT, ckpt_path=run.dir / "probe.weights.h5")
    per_epoch = u.median(probe["epoch_s"][1:]) or probe["fit_s"] / 3
    fixed = probe["setup_s"] + probe["epoch_s"][0] - per_epoch
    epochs = int(max(3, min(300, round((c["target_s"] - fixed) / per_epoch))))
    run.results["calibration"] = {"probe_epoch_s": probe["epoch_s"], "per_epoch_s": per_epoch, "epochs": epochs}
    return epochs


def part_small(run: u.Run, url: str, storage: Path, procs: u.Procs, client: Any) -> None:
    c = SMALL["smoke" if run.args.smoke else "full"]
    reps = run.args.reps or c["reps"]
    wp = procs.worker(url, storage, name="warm-worker")  # started first: the two TensorFlow imports overlap
    plain = PlainProc(procs)
    # one untimed fit first in each warm process: the first fit of a process pays one-time lazy imports
    plain.fit(builder="mlp", model_kw=_model_kw(c, 1e-3), data_kw=_data_kw(c), epochs=2, batch=c["batch"],
              validation_split=VAL_SPLIT, ckpt_path=run.dir / "warm.weights.h5")
    epochs = c.get("epochs") or calibrate(c, run, plain)
    spec = small_spec(c, epochs)

    u.wait_warm(client.r, wp)
    if not run.args.smoke:
        traind_job(client, small_spec(c, 2, "warm-up"))  # untimed: the worker's first job pays one-time costs

    a_runs: list[dict[str, Any]] = []
    b_runs: list[dict[str, Any]] = []
    order = []
    for i in range(reps):
        for which in ("ab" if i % 2 == 0 else "ba"):
            if which == "a":
                a_runs.append(plain.fit(builder="mlp", model_kw=_model_kw(c, 1e-3), data_kw=_data_kw(c),
                                        epochs=epochs, batch=c["batch"], validation_split=VAL_SPLIT,
                                        ckpt_path=run.dir / "keras" / f"best-{i}.weights.h5"))
            else:
                b_runs.append(traind_job(client, spec))
            order.append(which)
            print(f"  rep {i} {which}: {(a_runs if which == 'a' else b_runs)[-1]['fit_s']:.2f} s fit", flush=True)
    procs.kill(wp)
    procs.kill(plain.p)  # type: ignore[arg-type]

    a_tot = u.median(r["total_s"] for r in a_runs)
    b_e2e = u.median(r["e2e_s"] for r in b_runs)
    b_train = u.median(r["train_s"] for r in b_runs)
    a_fit = u.median(r["fit_s"] for r in a_runs)
    b_fit = u.median(r["fit_s"] for r in b_runs)
    a_ep = u.median(e for r in a_runs for e in r["epoch_s"][1:])
    b_ep = u.median(e for r in b_runs for e in r["epoch_s"][1:])
    a_first = u.median(r["epoch_s"][0] for r in a_runs)
    b_first = u.median(r["epoch_s"][0] for r in b_runs)
    rows = [
        {"measure": "end to end (a: build+load+fit; b: submit -> succeeded)", "a_keras_s": a_tot, "b_traind_s": b_e2e,
         "b/a": u.ratio(b_e2e, a_tot)},
        {"measure": "training (b: job started_at -> finished_at)", "a_keras_s": a_tot, "b_traind_s": b_train,
         "b/a": u.ratio(b_train, a_tot)},
        {"measure": "fit only (a: model.fit; b: sum of history time_s)", "a_keras_s": a_fit, "b_traind_s": b_fit,
         "b/a": u.ratio(b_fit, a_fit)},
        {"measure": "epoch 1 (tf.function tracing)", "a_keras_s": a_first, "b_traind_s": b_first,
         "b/a": u.ratio(b_first, a_first)},
        {"measure": "later epochs (median)", "a_keras_s": a_ep, "b_traind_s": b_ep, "b/a": u.ratio(b_ep, a_ep)},
    ]
    run.table(f"overhead, small model ({_desc(c)}, {epochs} epochs, {reps} reps each, order {''.join(order)}"
              f", medians)", rows, ["measure", "a_keras_s", "b_traind_s", "b/a"])
    run.results["small"] = {"config": c, "epochs": epochs, "spec": spec, "reps": reps, "order": order,
                            "a": a_runs, "b": b_runs, "rows": rows,
                            "goal_e2e_ratio_max": 1.05, "e2e_ratio": u.ratio(b_e2e, a_tot)}
    breakdown(run, url, storage, client, spec, a_runs, b_runs)


def _per_span(t: Timers, label: str, parent: str) -> list[float]:
    """For each call of ``parent``: the seconds spent in ``label`` calls made inside it (same thread)."""
    out = []
    for d, m, t0 in t.calls.get(parent, []):
        out.append(sum(x for x, mm, s0 in t.calls.get(label, []) if mm == m and t0 <= s0 <= t0 + d))
    return out


def _split_at(t: Timers, label: str, cut: float) -> tuple[float, int, float, int]:
    """(seconds, calls) of ``label`` that started before ``cut``, and of those that started after it."""
    before = [d for d, _, t0 in t.calls.get(label, []) if t0 < cut]
    after = [d for d, _, t0 in t.calls.get(label, []) if t0 >= cut]
    return sum(before), len(before), sum(after), len(after)


def _within(t: Timers, label: str, parent: str) -> tuple[float, int]:
    """(seconds, calls) of ``label`` calls made inside a call of ``parent``."""
    spans = [(t0, t0 + d) for d, _, t0 in t.calls.get(parent, [])]
    hits = [d for d, _, t0 in t.calls.get(label, []) if any(a <= t0 <= b for a, b in spans)]
    return sum(hits), len(hits)


def breakdown(run: u.Run, url: str, storage: Path, client: Any, spec: dict[str, Any], a_runs: list[dict[str, Any]],
              b_runs: list[dict[str, Any]]) -> None:
    """Where traind's extra time goes: the same job on an in-process worker with timers (after one warm-up job)."""
    from worker.runner import Worker

    w = Worker(u.worker_settings(url, storage, burst=True, dequeue_timeout_s=0.05))
    if not run.args.smoke:
        client.submit({**spec, "name": "warm-up", "fit": {**spec["fit"], "epochs": 2}})
        w.run()
    rec, t, trainer = in_process_traind(w, client, spec)
    stall = list(trainer.ckpts.stall_s) if trainer is not None else []
    n_ep = len(rec["history"])
    finish_calls = t.calls.get("Trainer._finish", [])
    finish_start = finish_calls[0][2] if finish_calls else float("inf")
    export_ep, export_n, final_export, _ = _split_at(t, "Checkpoints.export", finish_start)
    main = lambda label: t.total(label, main=True)  # noqa: E731
    bg = lambda label: t.total(label, main=False)  # noqa: E731
    progress = main("ProgressCallback.publish")
    publish, publish_n = _within(t, "JobStore.fenced_update", "EpochRecorder.on_epoch_end")
    epoch_end = main("EpochRecorder.on_epoch_end") + main("CheckpointCallback.on_epoch_end")
    per_batch = main("StopCallback.on_train_batch_end") + main("ProgressCallback.on_train_batch_end")
    fit_total = main("Trainer._fit")
    setup = main("Trainer.run") - fit_total - main("Trainer._finish")
    ckpt_bg = bg("Checkpoints.write") + bg("Checkpoints._commit_retaining")

    def row(piece: str, seconds: float, calls: int | None, per_epoch: bool = True) -> dict[str, Any]:
        return {"piece": piece, "seconds": seconds, "per_epoch_ms": 1000 * seconds / n_ep if per_epoch else None,
                "calls": calls}

    a_tot = u.median(r["total_s"] for r in a_runs) or 0.0
    a_fit = u.median(r["fit_s"] for r in a_runs) or 0.0
    a_ckpt = u.median(sum(r["ckpt_stall_s"]) for r in a_runs) or 0.0
    b_e2e = u.median(r["e2e_s"] for r in b_runs) or 0.0
    rows = [
        row("dequeue latency (created_at -> started_at; warm subprocess runs, median)",
            u.median(r["dequeue_s"] for r in b_runs) or 0.0, len(b_runs), False),
        row("claim + final state transitions (Lua)", main("JobStore.transition"),
            t.count("JobStore.transition", main=True), False),
        row("setup: build model + load data + resume (Trainer.run minus fit and finish)", setup, 1, False),
        row("  build_model", t.total("worker.build.build_model"), 1, False),
        row("  data load (loader + validation split)", t.total("worker.data.load"), 1, False),
        row("  resume (checkpoint index, history cleanup, Redis)", t.total("worker.resume.resume"), 1, False),
        row("model.fit with traind callbacks (all epochs)", fit_total, 1),
        row("  epoch-end hooks total (EpochRecorder + CheckpointCallback)", epoch_end,
            t.count("EpochRecorder.on_epoch_end")),
        row("    best export, synchronous (on improvement)", export_ep, export_n),
        row("    snapshot: weights + optimizer to host copies", main("Snapshotter.take"),
            t.count("Snapshotter.take")),
        row("    checkpoint stall: wait for the previous async write (stall_s)", sum(stall), len(stall)),
        row("    per-epoch Redis publishing (history, metrics, events)", publish, publish_n),
        row("  per-batch stop + progress callbacks (incl. progress writes)", per_batch,
            t.count("ProgressCallback.on_train_batch_end")),
        row("    progress writes (throttled to 1/s)", progress, t.count("ProgressCallback.publish")),
        row("finish: flush + final export", main("Trainer._finish"), t.count("Trainer._finish"), False),
        row("  final export", final_export, 1, False),
        row("release memory after the job (clear_session + gc)", t.total("worker.runner._release_memory"),
            t.count("worker.runner._release_memory"), False),
        row("background thread: heartbeat Lua", bg("JobStore.heartbeat"), t.count("JobStore.heartbeat")),
        row("background thread: worker registry update (psutil + pipeline)", bg("Worker.register"),
            t.count("Worker.register", main=False)),
        row("background thread: checkpoint write + commit", ckpt_bg, t.count("Checkpoints.write")),
    ]
    title = (f"where traind's time goes (in-process worker with timers, one job of {n_ep} epochs, wall "
             f"{rec['wall_s']:.2f} s | plain Keras: total {a_tot:.2f} s, fit {a_fit:.2f} s, its ModelCheckpoint "
             f"{a_ckpt:.3f} s | traind subprocess e2e {b_e2e:.2f} s)")
    run.table(title, rows, ["piece", "seconds", "per_epoch_ms", "calls"])
    run.results["breakdown"] = {
        "rows": rows, "in_process_wall_s": rec["wall_s"], "epochs": n_ep,
        "history_time_s": [e["time_s"] for e in rec["history"]], "stall_s": stall,
        "plain_ckpt_stall_total_s_median": a_ckpt,
        "timers": {k: {"n": len(v), "total_s": sum(d for d, _, _ in v), "main_thread_s": sum(d for d, m, _ in v if m)}
                   for k, v in t.calls.items()},
    }


def body(run: u.Run) -> None:
    st = u.start_stack(run)
    part_small(run, st.url, st.storage, st.procs, st.client)


def add_args(p: Any) -> None:
    p.add_argument("--reps", type=int, default=None, help="repetitions of each variant")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
