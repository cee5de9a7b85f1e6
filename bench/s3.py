"""Object storage (S3) costs: checkpoint upload throughput, resume from S3 vs a local path, the upload cache.

Runs against moto's S3 server (a separate process on a free port, over HTTP, through s3fs/botocore) unless
``--endpoint`` / ``--bucket`` name a real one (MinIO, AWS; credentials from the standard AWS_* variables).

* upload: a checkpoint of each size is written the way a worker writes it (``Checkpoints.write``: pack the arrays,
  sha256 while spooling, one PUT / multipart upload with retries, then the manifest), and the same bytes are put
  with a raw ``s3fs.pipe_file`` in the same run, alternating. Goal: traind >= 0.8x raw throughput.
* resume: what a resuming attempt does with storage before training (``check`` the bucket, abort unfinished
  uploads, read + verify + unpack the newest checkpoint), from s3:// and from a local directory.
* cache: the data load of a job (``get_arrays`` of its upload) on a worker whose cache is empty (first job) and
  when the same data was fetched before (second job: served from the local cache, verified by its hash).

    python -m bench.s3 [--smoke] [--json PATH] [--reps N] [--resume-reps N] [--endpoint URL --bucket NAME]
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import _util as u

NAME = "s3"
CFG = {
    # checkpoint sizes (MB of weights; Adam's two slots make the file ~3x that)
    # (moto_server answers 500 to CompleteMultipartUpload of ~400 MB objects: sizes stay under the 100 MB a single
    # PUT takes; --endpoint at MinIO/AWS for larger ones)
    "full": {"weights_mb": [4, 16, 32], "reps": 5, "data_mb": 256},
    "smoke": {"weights_mb": [1], "reps": 1, "data_mb": 2},
}


def snapshot(weights_mb: float, seed: int = 0) -> Any:
    from worker.checkpoint import Snapshot

    rng = np.random.default_rng(seed)
    n = int(weights_mb * 2**20 / 4)
    shapes = [n // 2, n // 4, n - n // 2 - n // 4]
    weights = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    opt = [np.zeros((), np.int64)] + [rng.standard_normal(s, dtype=np.float32) for s in shapes for _ in range(2)]
    return Snapshot(epoch=1, batch=0, weights=weights, optimizer=opt, state={"tracker": {}},
                    metrics={"loss": 1.0})


def body(run: u.Run) -> None:
    from jobs.redis.store import JobStore
    from jobs.storage import ckpt_format as fmt
    from jobs.storage.factory import open_storage
    from worker.cache import UploadCache
    from worker.checkpoint import Checkpoints
    from worker.ledger import RedisLedger

    c = CFG["smoke" if run.args.smoke else "full"]
    reps = run.args.reps or c["reps"]
    if run.args.endpoint:
        os.environ["AWS_ENDPOINT_URL"] = run.args.endpoint
        bucket = run.args.bucket
        where = run.args.endpoint
    else:
        from tests.storage.s3server import MotoS3, s3_env_for

        moto = MotoS3(run.dir).start()
        run.on_exit(moto.stop)
        os.environ.update(s3_env_for(moto.endpoint))
        bucket = f"bench-{secrets.token_hex(3)}"
        moto.client().create_bucket(Bucket=bucket)
        where = f"moto_server {moto.endpoint} (in-memory, same machine)"
    run.note(f"S3 endpoint: {where}, bucket {bucket}")
    srv = u.start_redis(run)
    import redis

    store = JobStore(redis.Redis.from_url(srv.url))
    s3 = open_storage(f"s3://{bucket}/bench-{secrets.token_hex(3)}")
    local = open_storage(run.dir / "local-storage").ensure()
    fs = s3.fs  # type: ignore[attr-defined]

    # -- upload throughput ------------------------------------------------------------------------------------------
    rows = []
    upload: dict[str, Any] = {}
    for mb in c["weights_mb"]:
        snap = snapshot(mb)
        data = fmt.pack({"w": snap.weights, "o": snap.optimizer, "e": snap.es_best_weights, "m": snap.metric_vars})
        size = len(data)
        ck = Checkpoints(s3, RedisLedger(store, "benchjob", 1, "tok"))
        t_traind, t_put, t_raw = [], [], []
        for i in range(reps):
            order = ("traind", "raw") if i % 2 == 0 else ("raw", "traind")
            for which in order:
                if which == "traind":
                    t0 = time.perf_counter()
                    ck.write(snap)  # pack + hash + upload + manifest, as the background writer does
                    t_traind.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    s3.put_bytes("jobs/benchjob/raw-bytes-traind.npz", data)  # the storage layer alone
                    t_put.append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    fs.pipe_file(f"{s3.root}/jobs/benchjob/raw.npz", data)  # type: ignore[attr-defined]
                    t_raw.append(time.perf_counter() - t0)
        ck.close()
        mbps = lambda ts, size=size: size / 2**20 / u.median(ts)  # noqa: E731
        row = {"checkpoint_MB": round(size / 2**20, 1), "traind_write_MBps": round(mbps(t_traind), 1),
               "traind_put_MBps": round(mbps(t_put), 1), "raw_s3fs_put_MBps": round(mbps(t_raw), 1),
               "write_vs_raw": round(u.median(t_raw) / u.median(t_traind), 3),
               "put_vs_raw": round(u.median(t_raw) / u.median(t_put), 3)}
        rows.append(row)
        upload[str(mb)] = {**row, "traind_write_s": u.summary(t_traind), "traind_put_s": u.summary(t_put),
                           "raw_put_s": u.summary(t_raw)}
    run.table("checkpoint upload (median of reps; write = pack + sha256 + PUT + manifest; put = storage layer only)",
              rows)
    run.results["upload"] = upload

    # -- resume: storage work of a resuming attempt -----------------------------------------------------------------
    rows = []
    resume: dict[str, Any] = {}
    for mb in c["weights_mb"]:
        snap = snapshot(mb, seed=1)
        per: dict[str, list[float]] = {"s3": [], "local": []}
        for name, st in (("s3", s3), ("local", local)):
            writer = Checkpoints(st, RedisLedger(store, "resumejob", 1, "tok"))
            manifest = writer.write(snap)
            writer.close()
            for _ in range(reps):
                ck = Checkpoints(st, RedisLedger(store, "resumejob", 2, "tok2"))
                t0 = time.perf_counter()
                st.check()
                for prefix in ("jobs/resumejob", ck.prefix):
                    st.cleanup_incomplete(prefix)
                restored, _events = ck.select({manifest["key"]: manifest}, "latest", None, None)
                per[name].append(time.perf_counter() - t0)
                assert restored is not None and len(restored.weights) == 3
                ck.close()
        row = {"checkpoint_MB": round(manifest["size"] / 2**20, 1), "s3_s": round(u.median(per["s3"]), 3),
               "local_s": round(u.median(per["local"]), 3)}
        rows.append(row)
        resume[str(mb)] = {**row, "s3": u.summary(per["s3"]), "local": u.summary(per["local"])}
    run.table("resume: check + abort unfinished uploads + read, verify and unpack the checkpoint (median)", rows)
    run.results["resume"] = resume

    # -- the upload cache -------------------------------------------------------------------------------------------
    n = int(c["data_mb"] * 2**20 / 4 / 33)
    rng = np.random.default_rng(2)
    digest = open_storage(s3.url).put_arrays({"x": rng.standard_normal((n, 32), dtype=np.float32),
                                              "y": rng.standard_normal((n, 1), dtype=np.float32)})
    cache_dir = Path(tempfile.mkdtemp(dir=run.dir, prefix="cache-"))
    jobs = []
    for job in (1, 2, 3):
        worker_side = open_storage(s3.url)  # a new attempt: a new Storage, the same machine's cache directory
        worker_side.cache = cache = UploadCache(cache_dir, max_bytes=10 * 2**30)
        t0 = time.perf_counter()
        arrays = worker_side.get_arrays(digest)
        dt = time.perf_counter() - t0
        jobs.append({"job": job, "data_load_s": round(dt, 3), "cache_hit": cache.hits == 1,
                     "fetched_from_s3": cache.misses == 1, "MB": round(sum(a.nbytes for a in arrays.values()) / 2**20,
                                                                        1)})
    run.table("data load of jobs with the same upload on one worker machine (cache: verified by sha256)", jobs)
    run.results["cache"] = jobs

    # -- resume end to end: bench.resume (requeue -> first batch on a warm / cold worker), S3 vs local ------------
    if run.args.resume_reps:
        import json

        from bench import resume

        rows = []
        for where, extra in (("local", []), ("s3", ["--storage", f"{s3.url}-resume"])):
            out = run.dir / f"resume-{where}.json"
            smoke = ["--smoke"] if run.args.smoke else []
            resume.main(["--reps", str(run.args.resume_reps), "--json", str(out), *smoke, *extra])
            res = json.loads(out.read_text())["results"]
            for srow in res["summary"]:
                rows.append({"storage": where, **srow, "model_load_s": round(res["model_load"]["model_load_s"], 3),
                             "goal_s": round(res["goal_warm_s"], 3)})
            run.results[f"resume_{where}"] = res
        run.table("resume end to end (bench.resume in this run): requeue -> first batch, medians", rows)


def add_args(p: Any) -> None:
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--endpoint", help="S3 endpoint (else a moto server is started)")
    p.add_argument("--bucket", help="existing bucket at --endpoint")
    p.add_argument("--resume-reps", type=int, default=0,
                   help="also run bench.resume (warm/cold pairs) on a local dir and on S3, in this run")


def main(argv: list[str] | None = None) -> int:
    return u.main_wrapper(NAME, __doc__, argv, body, add_args)


if __name__ == "__main__":
    raise SystemExit(main())
