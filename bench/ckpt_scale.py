"""Checkpointing at model scale (issue 13): what a per-epoch checkpoint costs the training thread, at 100 MB and 1 GB.

For each row (a wide Dense stack: 100 MB or 1 GB of float32 weights, three times that with Adam's moments), each
variant trains the same model on the same data in a process of its own (so that one variant's memory never weighs on
the next, and a 1 GB row fits in RAM), checkpoints on the run's disk:

- ``keras-none``: plain ``model.fit``, no checkpoint: the epoch time everything is compared with;
- ``host-copy``: plain ``model.fit`` plus, at each epoch end, the bare device-to-host copy of the resumable state
  (weights + optimizer variables) into reused host buffers (the reference ``stall_vs_copy`` divides by), then the
  same copy into fresh arrays as ``model.get_weights()`` makes it (``fresh_copy_s``);
- ``keras-every-epoch``: Keras' synchronous ``ModelCheckpoint(save_weights_only=True, save_best_only=False)``;
- ``traind-improving``: a traind job whose monitor improves every epoch (each epoch is the new best);
- ``traind-not-improving``: a traind job whose monitor never improves (``initial_value_threshold=0``), policy
  ``wait`` (the default);
- ``traind-not-improving-skip``: the same under ``TRAIND_CHECKPOINT_BACKPRESSURE=skip``.

Row kinds: a ``long`` row's epoch is padded (each batch also sleeps, a ``tf.py_function`` in the train step, standing
in for device compute that leaves the CPU free, as on a GPU) to ``pad`` times the raw write of the state measured at
the start of the row, so the background write is shorter than the epoch: the case the stall and epoch goals are
about. A ``short`` row trains one unpadded step per epoch, shorter than the write: it shows the backpressure policy
(``wait`` slows training to the disk's pace; ``skip`` keeps the pace and checkpoints every other epoch).

stall = the training thread's time in checkpoint code at an epoch end (traind: its whole epoch-end hook, including
its Redis updates); epochs 2.. are timed (the first one traces the step). The background writes (pack, sha256,
write, fsync, during training) are compared with a raw sequential write + fsync of the same arrays to a new file on
the same disk, made in the same process right after the job, five times, alternating with the same checkpoint writer
alone (no training beside it). This disk's pace swings several-fold from one write to the next, so the reference is
the median of all the row's raw writes (10 in a row of two traind variants, 15 with three), with its range shown.

    python -m bench.ckpt_scale [--rows 100MB-long,100MB-short,1GB-long] [--smoke] [--json PATH]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import _util as u

NAME = "ckpt_scale"
ALL = ["keras-none", "host-copy", "keras-every-epoch", "traind-improving", "traind-not-improving",
       "traind-not-improving-skip"]
CONFIGS: dict[str, dict[str, Any]] = {
    "full": {"dim": 1024, "depth": 2, "rows": [
        {"label": "100MB-long", "units": 4500, "batch": 32, "steps": 4, "epochs": 4, "kind": "long", "pad": 4.0,
         "variants": ALL},
        {"label": "100MB-short", "units": 4500, "batch": 32, "steps": 1, "epochs": 4, "kind": "short",
         "variants": ALL},
        # 250M params: a batch of 2, one step, so that the unpadded work is Adam's update of 3 GB, not matrix
        # products a 2-core machine needs minutes for; -skip left out (the long row never skips).
        {"label": "1GB-long", "units": 15300, "batch": 2, "steps": 1, "epochs": 4, "kind": "long", "pad": 3.0,
         "variants": ALL[:-1]}]},
    "smoke": {"dim": 32, "depth": 2, "rows": [
        {"label": "small-long", "units": 64, "batch": 32, "steps": 2, "epochs": 3, "kind": "long", "pad": 4.0,
         "variants": ALL}]},
}
GOALS = {"stall_vs_copy_max": 1.2, "stall_vs_keras_max": 0.25, "epoch_vs_no_ckpt_max": 1.10, "bg_vs_raw_min": 0.8}


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


def raw_write(path: Path, nbytes: int, chunk: int = 16 * 2**20, arrays: list[Any] | None = None,
              keep: bool = False) -> float:
    """Seconds to write ``nbytes`` sequentially (16 MiB chunks) and fsync: the disk's pace for a checkpoint's bytes.
    With ``arrays``: their bytes (a snapshot's), written straight from them, instead of a repeated random block.
    ``keep``: leave the file (the caller deletes it later), so that the next write needs new page-cache pages."""
    import os

    block = memoryview(os.urandom(chunk))
    pieces = ([memoryview(a).cast("B") for a in arrays] if arrays is not None
              else [block[:min(chunk, nbytes - i)] for i in range(0, nbytes, chunk)])
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for mv in pieces:
            for i in range(0, mv.nbytes, chunk):
                f.write(mv[i:i + chunk])
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    if not keep:
        path.unlink()
    return dt


def _disk_pace(storage: Any, store_dir: Path, groups: dict[str, list[Any]], reps: int = 5
               ) -> tuple[list[float], list[float]]:
    """The checkpoint writer alone (no training beside it) and a raw write + fsync of the same arrays, alternating,
    ``reps`` times each, every one to a new file kept until all are written: (writer seconds, raw seconds).

    Like a checkpoint (the previous one stays until the new one commits), each write needs page-cache pages the
    kernel has not just freed; on this VM touching such pages is several times slower than reusing freed ones, and
    the disk's pace swings several-fold from one write to the next, so the reference is a median of many writes (the
    row pools every traind variant's raw writes) and the writer is compared with the raw writes it alternated with.
    """
    from jobs.storage import ckpt_format as fmt
    arrays = [a for g in groups.values() for a in g]
    writer, raw, keys = [], [], []
    paths = [store_dir / f"raw-new-{i}.tmp" for i in range(reps)]
    try:
        for i in range(reps):
            keys.append(f"bench/idle-write-{i}.npz")
            t0 = time.perf_counter()
            with storage.open_write(keys[-1], pipelined=True) as w:
                fmt.write_npz(w, groups)
            writer.append(time.perf_counter() - t0)
            raw.append(raw_write(paths[i], 0, arrays=arrays, keep=True))
    finally:
        for k in keys:
            storage.delete(k)
        for p in paths:
            p.unlink(missing_ok=True)
    return writer, raw


# -- one variant, in its own process --------------------------------------------------------------------------------
def _copy_callback() -> Any:
    """A Keras callback timing, at each epoch end, the copy into reused buffers, then the fresh copy."""
    import keras

    from worker.snapshot import HostBuffers, host_copy

    class HostCopy(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.buffers = HostBuffers()
            self.reused_s: list[float] = []
            self.fresh_s: list[float] = []

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            t0 = time.perf_counter()
            self.buffers.copy("w", self.model.weights)
            self.buffers.copy("o", self.model.optimizer.variables)
            t1 = time.perf_counter()
            host_copy(self.model)
            self.reused_s.append(t1 - t0)
            self.fresh_s.append(time.perf_counter() - t1)

    return HostCopy()


def _keras_variant(v: str, a: dict[str, Any], store_dir: Path) -> dict[str, Any]:
    from bench.overhead import plain_fit

    path = store_dir / "keras" / "ckpt.weights.h5" if v == "keras-every-epoch" else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    cb = _copy_callback() if v == "host-copy" else None
    p = plain_fit("slow_dense", a["model_kw"], a["data_kw"], a["epochs"], a["batch"], 0.0, path,
                  save_best_only=False, monitor="loss", early_stopping=False, extra_callbacks=[cb] if cb else None)
    ep = p["epoch_s"][1:]
    if v == "host-copy":
        stall, fresh = cb.reused_s[1:], cb.fresh_s[1:]
    else:
        stall, fresh = (p["ckpt_stall_s"][1:] if path else [0.0] * len(ep)), None
    return {"epoch_s": ep, "stall_s": stall, "fresh_copy_s": fresh, "total_s": p["total_s"]}


def _traind_variant(v: str, a: dict[str, Any], store_dir: Path) -> dict[str, Any]:
    from bench.overhead import in_process_traind
    from jobs.client import Client
    from worker.runner import Worker

    ckpt: dict[str, Any] = {"monitor": "loss", "save_best_only": True, "save_weights_only": True}
    if v.startswith("traind-not-improving"):
        ckpt["initial_value_threshold"] = 0.0  # never improves: only the resumable checkpoint each epoch
    spec = {"name": f"ckpt-{a['label']}-{v}",
            "model": {"builder": "bench.models:slow_dense", "builder_kwargs": a["model_kw"]},
            "data": {"loader": "bench.models:regression_data", "loader_kwargs": a["data_kw"]},
            "fit": {"epochs": a["epochs"], "batch_size": a["batch"], "shuffle": False, "seed": 3},
            "checkpoint": ckpt, "max_restarts": 0}
    client = Client(settings=u.client_settings(a["url"], store_dir))
    w = Worker(u.worker_settings(a["url"], store_dir, burst=True, dequeue_timeout_s=0.05,
                                 checkpoint_backpressure="skip" if v.endswith("-skip") else "wait"))
    rec, t, trainer = in_process_traind(w, client, spec)
    ck = trainer.ckpts
    nbytes = max(ck.written_bytes)
    groups: dict[str, list[Any]] = {"w": [], "o": []}
    # the last snapshot's host buffers: the bytes each write wrote
    for (g, _), buf in trainer.checkpointing.snapshots.host._pool.items():
        groups[g].append(buf)
    idle, raws = _disk_pace(ck.storage, store_dir, groups)
    ckpts = client.store.checkpoints(rec["id"])
    # time_s of epoch e includes the epoch-end hooks of epoch e-1: epochs 2.. compare with Keras' epochs 2..
    hooks = [a + b for a, b in zip(t.durations("EpochRecorder.on_epoch_end"),
                                   t.durations("CheckpointCallback.on_epoch_end"))]
    return {"epoch_s": [e["time_s"] for e in rec["history"]][1:], "stall_s": hooks[1:],
            "offer_s": ck.stall_s[1:], "snapshot_s": t.durations("Snapshotter.take")[1:],
            "skipped_epochs": trainer.checkpointing.skipped_epochs,
            "ckpt_epochs": sorted(m["epoch"] for m in ckpts.values()),
            "bg_write_s": ck.write_s, "bg_bytes": ck.written_bytes,
            "bg_mb_s": [b / s / 1e6 for b, s in zip(ck.written_bytes, ck.write_s)],
            "raw_new_reps_s": raws, "raw_new_reps_mb_s": [nbytes / x / 1e6 for x in raws],
            "idle_write_reps_s": idle, "idle_vs_raw_new": u.median(raws) / u.median(idle),
            "finish_s": t.total("Trainer._finish"), "total_s": rec["wall_s"], "best_epoch": rec.get("best_epoch")}


def child(args_path: str, out_path: str) -> int:
    """Run one variant (``--child``): read its arguments, write its result (peak RSS included) as JSON."""
    import shutil

    a = json.loads(Path(args_path).read_text())
    store_dir = Path(a["store_dir"])
    with RssPeak() as rss:
        v = a["variant"]
        out = _traind_variant(v, a, store_dir) if v.startswith("traind") else _keras_variant(v, a, store_dir)
    out["peak_rss_gb"] = rss.peak / 1e9
    out["load"] = u.loadavg()
    for d in ("jobs", "keras"):
        shutil.rmtree(store_dir / d, ignore_errors=True)
    Path(out_path).write_text(json.dumps(out))
    return 0


def _run_child(run: u.Run, a: dict[str, Any]) -> dict[str, Any]:
    tag = f"{a['label']}-{a['variant']}"
    args_path, out_path = run.dir / f"{tag}.args.json", run.dir / f"{tag}.out.json"
    args_path.write_text(json.dumps(a))
    with open(run.dir / f"{tag}.log", "wb") as log:
        rc = subprocess.call([sys.executable, "-m", "bench.ckpt_scale", "--child", str(args_path), str(out_path)],
                             cwd=u.ROOT, env=u.child_env(), stdout=log, stderr=subprocess.STDOUT)
    if rc != 0 or not out_path.exists():
        tail = (run.dir / f"{tag}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{tag} exited with {rc}:\n{tail}")
    return json.loads(out_path.read_text())


# -- the run --------------------------------------------------------------------------------------------------------
def _row_table(label: str, res: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    base = u.median(res["keras-none"]["epoch_s"])
    copy = u.median(res["host-copy"]["stall_s"])
    keras_stall = u.median(res["keras-every-epoch"]["stall_s"])
    # The disk's pace: every raw write to a new file this row made (each traind variant's, alternating with the
    # writer alone); one variant's few swing several-fold (355-1782 MB/s in one earlier run).
    pool = sorted(x for r in res.values() for x in r.get("raw_new_reps_mb_s", []))
    raw_new = u.median(pool) if pool else None
    rows = []
    for v, r in res.items():
        st = u.median(r["stall_s"])
        bg = u.median(r["bg_mb_s"]) if r.get("bg_mb_s") else None
        own = r.get("raw_new_reps_mb_s")
        rows.append({
            "row": label, "variant": v, "epoch_s": u.median(r["epoch_s"]),
            "epoch_vs_no_ckpt": u.ratio(u.median(r["epoch_s"]), base), "stall_s": st,
            "stall_vs_copy": u.ratio(st, copy) if v != "keras-none" else None,
            "stall_vs_keras": u.ratio(st, keras_stall) if v != "keras-none" else None,
            "skipped": len(r["skipped_epochs"]) if "skipped_epochs" in r else None,
            "bg_write_s": u.median(r["bg_write_s"]) if r.get("bg_write_s") else None,
            "bg_mb_s": bg, "raw_new_mb_s": u.median(own) if own else None,
            "raw_new_row": f"{raw_new:.0f} ({pool[0]:.0f}-{pool[-1]:.0f}, n={len(pool)})" if bg and raw_new else None,
            "bg_vs_raw_new": u.ratio(bg, raw_new) if bg and raw_new else None,
            "idle_vs_raw_new": r.get("idle_vs_raw_new"),
            "peak_rss_gb": r["peak_rss_gb"], "load1": r["load"][0]})
    return rows


def body(run: u.Run) -> None:
    from bench.models import param_count

    c = CONFIGS["smoke" if run.args.smoke else "full"]
    srv = u.start_redis(run)
    wanted = run.args.rows.split(",") if run.args.rows else None
    table: list[dict[str, Any]] = []
    rows_out: list[dict[str, Any]] = []
    for row in c["rows"]:
        if wanted and row["label"] not in wanted:
            continue
        store_dir = run.dir / "storage" / row["label"]
        store_dir.mkdir(parents=True, exist_ok=True)
        params = param_count(c["dim"], row["units"], c["depth"])
        state_bytes = params * 12  # weights + Adam's two moments, float32
        raw_s = raw_write(store_dir / "calibrate.tmp", state_bytes)
        epoch_target = row["pad"] * raw_s if row["kind"] == "long" else 0.0
        delay = epoch_target / row["steps"]
        a = {"label": row["label"], "url": srv.url, "store_dir": str(store_dir), "epochs": row["epochs"],
             "batch": row["batch"],
             "model_kw": {"dim": c["dim"], "units": row["units"], "depth": c["depth"], "batch_delay_s": delay,
                          "learning_rate": 1e-5},
             "data_kw": {"n": row["batch"] * row["steps"], "dim": c["dim"], "seed": 0}}
        res: dict[str, dict[str, Any]] = {}
        for v in row["variants"]:
            res[v] = _run_child(run, {**a, "variant": v})
            r = res[v]
            print(f"  {row['label']} {v}: epoch {u.median(r['epoch_s']):.2f} s, stall {u.median(r['stall_s']):.3f} s,"
                  f" rss {r['peak_rss_gb']:.1f} GB, load {r['load']}", flush=True)
        table += _row_table(row["label"], res)
        rows_out.append({"row": row, "params": params, "weights_mb": params * 4 / 1e6, "state_mb": state_bytes / 1e6,
                         "calibration_raw_write_s": raw_s, "batch_delay_s": delay, "runs": res})
        # after each row: a row that completed is kept even if a later one fails
        run.results.update({"config": c, "rows": table, "runs": rows_out, "goals": GOALS})
    desc = "; ".join(
        f"{x['row']['label']}: {x['params'] / 1e6:.0f}M params, {x['weights_mb']:.0f} MB weights, "
        f"{x['state_mb']:.0f} MB with Adam, {x['row']['steps']} step(s)/epoch of {x['row']['batch']} samples"
        + (f" padded by {x['batch_delay_s']:.2f} s/step (epoch ~{x['row']['pad']}x the "
           f"{x['calibration_raw_write_s']:.2f} s raw write)" if x["row"]["kind"] == "long" else ", unpadded")
        + f", {x['row']['epochs']} epochs" for x in rows_out)
    run.table(f"checkpoint-bound models, each variant in its own process, checkpoints on disk ({desc}); epochs 2.. "
              "timed, medians; stall = training thread's time in checkpoint code at an epoch end (traind: its whole "
              "epoch-end hook); stall_vs_copy: vs the bare copy into reused host buffers; skipped = non-improving "
              "epochs not checkpointed because the previous write was still running (policy skip); bg_mb_s = the "
              "background writes' throughput during training (pack, crc32, sha256, write, fsync, manifest), median; "
              "raw_new_mb_s = a raw write + fsync of the same arrays to a new file (new page-cache pages, as a "
              "checkpoint needs), median of the 5 this variant made right after its job; raw_new_row = all the "
              "row's raw writes to new files pooled: median (min-max, n); bg_vs_raw_new = bg_mb_s / that row "
              "median; idle_vs_raw_new = the writer alone / the raw writes it alternated with (medians of 5, new "
              "files); load1 = 1-min load average after the variant", table,
              ["row", "variant", "epoch_s", "epoch_vs_no_ckpt", "stall_s", "stall_vs_copy", "stall_vs_keras",
               "skipped", "bg_write_s", "bg_mb_s", "raw_new_mb_s", "raw_new_row", "bg_vs_raw_new", "idle_vs_raw_new",
               "peak_rss_gb", "load1"])


def add_args(p: Any) -> None:
    p.add_argument("--rows", default=None, help="rows to run, comma-separated labels")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return child(argv[1], argv[2])
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
