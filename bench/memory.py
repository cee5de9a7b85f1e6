"""Worker memory over consecutive jobs: RSS of one warm worker subprocess after 1, 10 and 50 small jobs.

The worker runs ``keras.backend.clear_session()`` + ``gc.collect()`` after every job; the bench waits until the
worker's registry entry shows the job counted (written after that release) and reads the process' RSS and USS
with psutil. Goal: growth from job 1 to job 50 of at most a few MB. Beside it, the same fits repeated in one plain
Keras process (``bench._plain``) with ``clear_session()`` + ``gc.collect()`` after each (up to 20).

    python -m bench.memory [--smoke] [--json PATH] [--jobs N]
"""

from __future__ import annotations

import time
from typing import Any

from bench import _util as u

NAME = "memory"
CFG = {"full": {"jobs": 50, "marks": [1, 10, 25, 50]}, "smoke": {"jobs": 2, "marks": [1, 2]}}


def spec(i: int) -> dict[str, Any]:
    return {
        "name": f"memory-{i}",
        "model": {"builder": "bench.models:mlp", "builder_kwargs": {"dim": 8, "units": 64, "depth": 2}},
        "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": 2000, "dim": 8, "seed": i}},
        "fit": {"epochs": 3, "batch_size": 64, "validation_split": 0.2, "seed": i},
        "checkpoint": {"monitor": "val_loss", "save_best_only": True, "save_weights_only": True},
        "early_stopping": {"monitor": "val_loss", "patience": 2, "restore_best_weights": True},
    }


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def body(run: u.Run) -> None:
    import psutil

    from jobs.client import Client
    from jobs.contract import keys

    c = CFG["smoke" if run.args.smoke else "full"]
    n = run.args.jobs or c["jobs"]
    marks = sorted({m for m in c["marks"] if m <= n} | {n})
    srv = u.start_redis(run)
    storage = run.dir / "storage"
    procs = u.Procs(run.dir / "logs")
    run.on_exit(procs.close)
    client = Client(settings=u.client_settings(srv.url, storage))
    r = client.r
    p = procs.worker(srv.url, storage, name="worker")
    wid = u.wait_warm(r, p)
    proc = psutil.Process(p.pid)

    def mem() -> tuple[float, float]:
        info = proc.memory_full_info()
        return info.rss / 2**20, info.uss / 2**20

    time.sleep(1.0)
    rss0, uss0 = mem()
    samples: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        h = client.submit(spec(i))
        st = u.wait_for(lambda: r.hget(keys.job(h.id), "state") in (b"succeeded", b"failed", b"cancelled"),  # noqa: B023
                        300, f"job {i}", 0.02)
        if r.hget(keys.job(h.id), "state") != b"succeeded":
            raise RuntimeError(f"job {i}: {client.store.get(h.id).get('error')} {st}")
        # jobs_done is re-registered after the worker released the job's memory
        u.wait_for(lambda: int(r.hget(keys.worker(wid), "jobs_done") or 0) >= i, 60, "the worker's release",  # noqa: B023
                   0.02)
        rss, uss = mem()
        samples.append({"job": i, "rss_mb": round(rss, 1), "uss_mb": round(uss, 1)})
        if i in marks:
            print(f"  after job {i}: RSS {rss:.1f} MB, USS {uss:.1f} MB", flush=True)
    procs.kill(p)
    by = {s["job"]: s for s in samples}
    rows = [{"after_jobs": 0, "rss_mb": round(rss0, 1), "uss_mb": round(uss0, 1), "rss_vs_job1_mb": None}]
    rows += [{"after_jobs": m, "rss_mb": by[m]["rss_mb"], "uss_mb": by[m]["uss_mb"],
              "rss_vs_job1_mb": round(by[m]["rss_mb"] - by[1]["rss_mb"], 1)} for m in marks]
    tail = samples[len(samples) // 5:] if len(samples) >= 5 else samples
    per_job = slope([s["job"] for s in tail], [s["rss_mb"] for s in tail])
    growth = by[n]["rss_mb"] - by[1]["rss_mb"]
    run.table(f"worker RSS over {n} consecutive small jobs (one warm subprocess worker)", rows)
    run.note(f"growth job 1 -> {n}: {growth:+.1f} MB RSS, {by[n]['uss_mb'] - by[1]['uss_mb']:+.1f} MB USS; "
             f"trend over jobs {tail[0]['job']}..{n}: {per_job if per_job is None else round(per_job, 3)} MB/job")
    run.results.update({"jobs": n, "baseline": {"rss_mb": rss0, "uss_mb": uss0}, "samples": samples, "rows": rows,
                        "growth_mb": round(growth, 1), "slope_mb_per_job": per_job})
    if not run.args.smoke:  # a second TensorFlow process: too slow for the smoke test
        plain_loop(run, procs, c, min(n, 20))


def plain_loop(run: u.Run, procs: u.Procs, c: dict[str, Any], n: int) -> None:
    """Side by side: the same fits in a plain Keras process (ModelCheckpoint + EarlyStopping, then
    ``clear_session()`` + ``gc.collect()`` after each, as the worker did before its own fixes)."""
    import psutil

    from bench.overhead import PlainProc

    plain = PlainProc(procs)
    proc = psutil.Process(plain.p.pid)
    samples = []
    for i in range(1, n + 1):
        plain.fit(builder="mlp", model_kw={"dim": 8, "units": 64, "depth": 2, "learning_rate": 1e-3},
                  data_kw={"n": 2000, "dim": 8, "seed": i}, epochs=3, batch=64, validation_split=0.2,
                  ckpt_path=run.dir / "plain" / "best.weights.h5")
        samples.append({"fit": i, "rss_mb": round(proc.memory_info().rss / 2**20, 1)})
    procs.kill(plain.p)  # type: ignore[arg-type]
    tail = samples[len(samples) // 5:] if len(samples) >= 5 else samples
    per = slope([s["fit"] for s in tail], [s["rss_mb"] for s in tail])
    growth = samples[-1]["rss_mb"] - samples[0]["rss_mb"]
    run.note(f"plain Keras, same model and callbacks, {n} fits in one process with clear_session() + gc.collect() "
             f"after each: RSS {samples[0]['rss_mb']:.1f} -> {samples[-1]['rss_mb']:.1f} MB ({growth:+.1f} MB), "
             f"trend {per if per is None else round(per, 3)} MB/fit")
    run.results["plain_keras_loop"] = {"fits": n, "samples": samples, "growth_mb": round(growth, 1),
                                       "slope_mb_per_fit": per}


def add_args(p: Any) -> None:
    p.add_argument("--jobs", type=int, default=None, help="consecutive jobs (default 50; smoke 2)")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
