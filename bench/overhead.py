"""Training overhead: the same job as plain ``model.fit`` (Keras' ModelCheckpoint + EarlyStopping) and through traind.

Part 1 (small model, ~10 s of plain fit): (a) ``model.fit`` with ``ModelCheckpoint(save_best_only,
save_weights_only)`` + ``EarlyStopping(restore_best_weights)`` in a warm process of its own (``bench._plain``:
TensorFlow imported, one untimed fit first); (b) the same spec submitted to a *warm* traind worker
subprocess (TensorFlow imported and one untimed job run before timing), submit -> succeeded. A and B alternate
(A B, B A, ...); medians and the ratio b/a are reported. A third, in-process traind run with timers around the
worker's pieces gives the breakdown of traind's extra time.

Part 2 (a ~25M-parameter Dense stack, ~100 MB of weights, 2 steps per epoch): per-epoch wall time and the training
thread's checkpoint stall of Keras' ModelCheckpoint (synchronous, every epoch) against traind (asynchronous
resumable checkpoint every epoch, plus a synchronous ``best`` export when the monitor improves), with a
no-checkpoint Keras baseline.

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
# Rows of the checkpoint-bound part: 24.9M params (~100 MB of weights, ~300 MB with Adam) and 250M params (~1 GB,
# ~3 GB with Adam). One step per epoch (the 1 GB row: a batch of 2, so that its epoch is mostly Adam's update of
# 3 GB of state rather than matrix products this loaded 2-core machine cannot do in minutes).
# "dir": the storage the checkpoints go to (None: the run's dir on disk).
BIG = {
    "full": {"dim": 1024, "depth": 2, "batch": 32, "rows": [
        {"label": "100MB-disk", "units": 4500, "n": 32, "batch": 32, "epochs": 3, "dir": None},
        {"label": "100MB-tmpfs", "units": 4500, "n": 32, "batch": 32, "epochs": 3, "dir": "/dev/shm"},
        {"label": "1GB-tmpfs", "units": 15300, "n": 2, "batch": 2, "epochs": 3, "dir": "/dev/shm"}]},
    "smoke": {"dim": 32, "depth": 2, "batch": 32, "rows": [
        {"label": "small-disk", "units": 64, "n": 64, "batch": 32, "epochs": 3, "dir": None}]},
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
              monitor: str = "val_loss", early_stopping: bool = True, host_copy: bool = False,
              extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Build + load + fit in this process with Keras' own callbacks; times from the builder call on.

    ``host_copy``: instead of a checkpoint, only the bare device-to-host copy of the resumable state (weights +
    optimizer variables, what traind's snapshot takes) at each epoch end, timed the same way as the checkpoint.
    """
    import keras

    from bench import models

    with Timers() as t:
        t.wrap(keras.callbacks.ModelCheckpoint, "on_epoch_end", "ckpt")
        t.wrap(_HostCopy, "on_epoch_end", "ckpt")
        t0 = time.perf_counter()
        keras.utils.set_random_seed(SEED)
        model = getattr(models, builder)(**model_kw)
        x, y = models.regression_data(**data_kw)
        clock = _epoch_clock()
        cbs: list[Any] = [clock]
        if ckpt_path is not None:
            cbs.append(keras.callbacks.ModelCheckpoint(str(ckpt_path), monitor=monitor, save_best_only=save_best_only,
                                                       save_weights_only=True))
        if host_copy:
            cbs.append(_HostCopy())
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


class _HostCopy:
    """A Keras callback taking (and dropping) the bare host copy of the state at each epoch end."""

    def __new__(cls) -> Any:
        import keras

        from worker.trainer import host_copy

        class HostCopy(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                _HostCopy.on_epoch_end(self, epoch, logs, host_copy)

        return HostCopy()

    @staticmethod
    def on_epoch_end(cb: Any, epoch: int, logs: Any, fn: Any) -> None:
        fn(cb.model)


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
    from jobs import keys

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

    import jobs.storage as storage_mod
    import worker.data as data_mod
    import worker.runner as runner_mod
    import worker.trainer as trainer_mod
    from jobs.store import JobStore
    from worker.callbacks import ControlCallback
    from worker.checkpoint import Checkpoints
    from worker.runner import Worker
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
                (trainer_mod, "build_model"), (data_mod, "load"), (Trainer, "run"), (Trainer, "_resume"),
                (Trainer, "_fit"), (Trainer, "_on_epoch_end"), (Trainer, "_snapshot"),
                (Checkpoints, "_commit_retaining"),
                (Trainer, "_on_progress"), (Trainer, "_finish"), (Checkpoints, "export"), (Checkpoints, "save_async"),
                (Checkpoints, "write"), (Checkpoints, "flush"), (JobStore, "fenced_update"), (JobStore, "heartbeat"),
                (JobStore, "transition"), (ControlCallback, "on_train_batch_end"), (storage_mod, "sha256_file"),
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
    progress = main("Trainer._on_progress")
    publish, publish_n = _within(t, "JobStore.fenced_update", "Trainer._on_epoch_end")
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
        row("  build_model", t.total("worker.trainer.build_model"), 1, False),
        row("  data load (loader + validation split)", t.total("worker.data.load"), 1, False),
        row("  resume (checkpoint index, history cleanup, Redis)", t.total("Trainer._resume"), 1, False),
        row("model.fit with traind callbacks (all epochs)", fit_total, 1),
        row("  epoch-end hook total (Trainer._on_epoch_end)", main("Trainer._on_epoch_end"),
            t.count("Trainer._on_epoch_end")),
        row("    best export, synchronous (on improvement)", export_ep, export_n),
        row("    snapshot: weights + optimizer to host copies", main("Trainer._snapshot"),
            t.count("Trainer._snapshot")),
        row("    checkpoint stall: wait for the previous async write (stall_s)", sum(stall), len(stall)),
        row("    per-epoch Redis publishing (history, metrics, events)", publish, publish_n),
        row("  per-batch control callback (incl. progress writes)", main("ControlCallback.on_train_batch_end"),
            t.count("ControlCallback.on_train_batch_end")),
        row("    progress writes (throttled to 1/s)", progress, t.count("Trainer._on_progress")),
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


# -- part 2 ----------------------------------------------------------------------------------------------------------
VARIANTS = ["keras-none", "host-copy", "keras-every-epoch", "traind-improving", "traind-not-improving",
            "traind-not-improving-skip"]  # -skip: TRAIND_CHECKPOINT_BACKPRESSURE=skip (default: wait)


class RssPeak:
    """Peak RSS of this process while the block runs (psutil, sampled every 20 ms)."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, me.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> RssPeak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def raw_write(path: Path, nbytes: int, chunk: int = 16 * 2**20) -> float:
    """Seconds to write ``nbytes`` sequentially (16 MiB chunks) and fsync: the disk's pace for a checkpoint's bytes."""
    import os

    block = os.urandom(chunk)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            f.write(block[:min(chunk, left)])
            left -= chunk
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return dt


def _big_variant(v: str, c: dict[str, Any], row: dict[str, Any], url: str, store_dir: Path, client: Any
                 ) -> dict[str, Any]:
    import shutil

    from worker.runner import Worker

    mkw = {"dim": c["dim"], "units": row["units"], "depth": c["depth"], "learning_rate": 1e-5}
    dkw = {"n": row["n"], "dim": c["dim"], "seed": 0}
    out: dict[str, Any] = {}
    with RssPeak() as rss:
        if not v.startswith("traind"):
            path = store_dir / "keras" / "ckpt.weights.h5" if v == "keras-every-epoch" else None
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            p = plain_fit("big_dense", mkw, dkw, row["epochs"], row["batch"], 0.0, path, save_best_only=False,
                          monitor="loss", early_stopping=False, host_copy=v == "host-copy")
            ep = p["epoch_s"][1:]
            stall = p["ckpt_stall_s"][1:] if v != "keras-none" else [0.0] * len(ep)
            out = {"epoch_s": ep, "stall_s": stall, "total_s": p["total_s"]}
        else:
            ckpt: dict[str, Any] = {"monitor": "loss", "save_best_only": True, "save_weights_only": True}
            if v.startswith("traind-not-improving"):
                ckpt["initial_value_threshold"] = 0.0  # never improves: only the resumable checkpoint is written
            spec = {"name": f"ckpt-{row['label']}",
                    "model": {"builder": "bench.models:big_dense", "builder_kwargs": mkw},
                    "data": {"loader": "bench.models:regression_data", "loader_kwargs": dkw},
                    "fit": {"epochs": row["epochs"], "batch_size": row["batch"], "shuffle": False, "seed": SEED},
                    "checkpoint": ckpt, "max_restarts": 0}
            policy = "skip" if v.endswith("-skip") else "wait"
            w = Worker(u.worker_settings(url, store_dir, burst=True, dequeue_timeout_s=0.05,
                                         checkpoint_backpressure=policy))
            rec, t, trainer = in_process_traind(w, client, spec)
            ck = trainer.ckpts
            hist = [e["time_s"] for e in rec["history"]]
            ends = t.durations("Trainer._on_epoch_end")
            nbytes = max(ck.written_bytes) if ck.written_bytes else 0
            raw_s = raw_write(store_dir / "raw-write.tmp", nbytes) if nbytes else None
            bg = [b / s for b, s in zip(ck.written_bytes, ck.write_s)]
            # time_s of epoch e includes the checkpoint hook of epoch e-1: epochs 2.. compare with Keras' epochs 2..
            out = {"epoch_s": hist[1:], "stall_s": ends[1:], "ckpt_s": ck.stall_s[1:],
                   "snapshot_s": t.durations("Trainer._snapshot")[1:], "skipped_epochs": trainer.skipped_epochs,
                   "ckpt_epochs": sorted(m["epoch"] for m in client.store.checkpoints(rec["id"]).values()),
                   "bg_write_s": ck.write_s, "bg_bytes": ck.written_bytes, "bg_mb_s": [x / 1e6 for x in bg],
                   "raw_write_s": raw_s, "raw_mb_s": nbytes / raw_s / 1e6 if raw_s else None,
                   "total_s": rec["wall_s"], "finish_s": t.total("Trainer._finish")}
        _release()
    out["peak_rss_mb"] = rss.peak / 1e6
    out["load"] = u.loadavg()
    shutil.rmtree(store_dir / "jobs", ignore_errors=True)
    shutil.rmtree(store_dir / "keras", ignore_errors=True)
    return out


def part_big(run: u.Run, url: str, storage: Path, client: Any) -> None:
    """Checkpoint-bound rows: per-checkpoint training-thread stall vs the bare host copy and vs Keras' synchronous
    ModelCheckpoint, epoch time vs checkpoint-free, background write throughput vs a raw write, peak RSS."""
    from bench.models import param_count

    c = BIG["smoke" if run.args.smoke else "full"]
    results: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    for row in c["rows"]:
        if run.args.rows and row["label"] not in run.args.rows.split(","):
            continue
        store_dir = Path(row["dir"]) / f"traind-bench-{run.dir.name}" if row.get("dir") else storage / row["label"]
        store_dir.mkdir(parents=True, exist_ok=True)
        run.on_exit(lambda d=store_dir: __import__("shutil").rmtree(d, ignore_errors=True))
        params = param_count(c["dim"], row["units"], c["depth"])
        res: dict[str, dict[str, Any]] = {}
        for v in VARIANTS:
            res[v] = _big_variant(v, c, row, url, store_dir, client)
            print(f"  {row['label']} {v}: epoch {u.median(res[v]['epoch_s']):.2f} s, stall "
                  f"{u.median(res[v]['stall_s']):.3f} s, load {res[v]['load']}", flush=True)
        base = u.median(res["keras-none"]["epoch_s"])
        copy = u.median(res["host-copy"]["stall_s"])
        keras_stall = u.median(res["keras-every-epoch"]["stall_s"])
        for v in VARIANTS:
            r = res[v]
            st = u.median(r["stall_s"])
            table.append({
                "row": row["label"], "variant": v, "epoch_s": u.median(r["epoch_s"]),
                "epoch_vs_no_ckpt": u.ratio(u.median(r["epoch_s"]), base), "stall_s": st,
                "stall_vs_copy": u.ratio(st, copy) if v != "keras-none" else None,
                "stall_vs_keras": u.ratio(st, keras_stall) if v != "keras-none" else None,
                "skipped": len(r["skipped_epochs"]) if "skipped_epochs" in r else None,
                "bg_write_s": u.median(r["bg_write_s"]) if r.get("bg_write_s") else None,
                "bg_vs_raw": u.ratio(u.median(r["bg_mb_s"]), r["raw_mb_s"]) if r.get("bg_mb_s") else None,
                "peak_rss_gb": r["peak_rss_mb"] / 1000, "load1": r["load"][0]})
        results.append({"row": row, "params": params, "weights_mb": params * 4 / 1e6, "state_mb": params * 12 / 1e6,
                        "storage": str(store_dir), "runs": res})
    desc = "; ".join(f"{x['row']['label']}: {x['params'] / 1e6:.0f}M params, {x['weights_mb']:.0f} MB weights, "
                     f"{x['state_mb']:.0f} MB with Adam, {x['row']['n'] // x['row']['batch']} step(s)/epoch of "
                     f"{x['row']['batch']} samples, "
                     f"{x['row']['epochs']} epochs, storage {x['row'].get('dir') or 'disk'}" for x in results)
    run.table(f"checkpoint-bound models ({desc}); epochs 2.. timed, medians; stall = training thread's time in "
              "checkpoint code at an epoch end (traind: its whole epoch-end hook); skipped = non-improving epochs "
              "not checkpointed because the previous write was still running (backpressure); load1 = 1-min load "
              "average after the variant", table,
              ["row", "variant", "epoch_s", "epoch_vs_no_ckpt", "stall_s", "stall_vs_copy", "stall_vs_keras",
               "skipped", "bg_write_s", "bg_vs_raw", "peak_rss_gb", "load1"])
    run.results["big"] = {"config": c, "rows": table, "runs": results,
                          "goals": {"stall_vs_copy_max": 1.2, "stall_vs_keras_max": 0.25, "epoch_vs_no_ckpt_max": 1.10,
                                    "bg_vs_raw_min": 0.8}}


def body(run: u.Run) -> None:
    srv = u.start_redis(run)
    storage = run.dir / "storage"
    procs = u.Procs(run.dir / "logs")
    run.on_exit(procs.close)
    from jobs.client import Client

    client = Client(settings=u.client_settings(srv.url, storage))
    if not run.args.skip_small:
        part_small(run, srv.url, storage, procs, client)
    if not run.args.skip_big:
        part_big(run, srv.url, storage, client)


def add_args(p: Any) -> None:
    p.add_argument("--reps", type=int, default=None, help="repetitions of each variant")
    p.add_argument("--skip-small", action="store_true")
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--rows", default=None, help="checkpoint-bound rows to run, comma-separated labels")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
