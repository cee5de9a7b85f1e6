#!/usr/bin/env bash
# GPU check, prepared for a session that has a GPU machine (none was lent when it was written: docs/benchmarks.md
# carries no GPU figures). Run from the repository root:   bash bench/gpu_check.sh [OUT_DIR]
#
# 1. trains a job on a worker started with `--device gpu:0` and checks it ran on the GPU (TensorFlow sees it, the
#    worker registry reports GPU memory in use while the job trains, the card's name is recorded);
# 2. SIGKILLs that worker mid-training, starts another `--device gpu:0` worker and checks the job resumes from its
#    checkpoint and succeeds;
# 3. runs bench/ckpt_scale.py (checkpoint stall at 100 MB and 1 GB), bench/write_ceiling.py (what bounds a
#    checkpoint write with many cores) and bench/job_end.py on the GPU machine.
# Results: OUT_DIR (default $OUT, else /tmp/traind-gpu-check): gpu_check.json, the benches' JSON, logs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp/traind-gpu-check}}"
mkdir -p "$OUT_DIR"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
python - <<'EOF'
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
assert gpus, "TensorFlow sees no GPU: install the CUDA build of tensorflow (pip install 'tensorflow[and-cuda]')"
print("tensorflow", tf.__version__, "sees", gpus)
EOF

PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
redis-server --port "$PORT" --save "" --appendonly no --daemonize yes --logfile "$OUT_DIR/redis.log"
export TRAIND_REDIS_URL="redis://127.0.0.1:$PORT/0" TRAIND_STORAGE_DIR="$OUT_DIR/storage" \
       TRAIND_ALLOWED_MODULES="examples,bench"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 -- "-$p" 2>/dev/null || true; done
            redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; }
trap cleanup EXIT
start_worker() {  # its own session, so a kill takes its whole tree
    setsid python -m daemon.cli worker --device gpu:0 >"$OUT_DIR/worker-$1.log" 2>&1 &
    PIDS+=($!)
}

start_worker 1
python - "$OUT_DIR" <<'EOF'
import json, os, signal, subprocess, sys, time
from pathlib import Path
from jobs.client import Client
from jobs.ops import admin
out = Path(sys.argv[1])
c = Client()
# ~100 MB of weights; enough epochs to be killed mid-training and resume
spec = {"name": "gpu-check",
        "model": {"builder": "bench.models:big_dense", "builder_kwargs": {"dim": 1024, "units": 4500, "depth": 2}},
        "data": {"loader": "bench.models:regression_data", "loader_kwargs": {"n": 4096, "dim": 1024, "seed": 0}},
        "fit": {"epochs": 8, "batch_size": 64, "seed": 1}, "checkpoint": {"monitor": "loss"}}
job = c.submit(spec)

def wait(pred, what, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = job.status()
        if pred(st):
            return st
        if st["state"] in ("failed", "cancelled"):
            raise SystemExit(f"job {st['state']}: {st.get('error')}")
        time.sleep(0.2)
    raise SystemExit(f"timeout waiting for {what}: {job.status()}")

st = wait(lambda s: s["state"] == "running" and int(s.get("epoch") or 0) >= 2, "epoch 2 on worker 1")
ws = [w for w in admin.workers(c.store) if w.get("job") == job.id]
assert ws and ws[0].get("device") == "gpu:0", f"worker registry: {ws}"
gpu_mem = float(ws[0].get("gpu_mem_mb") or 0)
assert gpu_mem > 0, f"the worker reports no GPU memory in use while training: {ws[0]}"
victim = ws[0]["pid"]
os.kill(int(victim), signal.SIGKILL)  # a dead worker: its lease expires, the supervisor-less requeue below
from jobs.redis.delivery import requeue
from jobs.contract.events import EventKind
raw = c.store.raw(job.id)
requeue(c.store, job.id, attempt=int(raw["attempt"]), queue=raw["queue"], kind=EventKind.REQUEUED,
        msg="gpu_check: worker killed", fields={"restarts": int(raw.get("restarts") or 0) + 1})
Path(out / "killed").write_text(json.dumps({"epoch": st["epoch"], "gpu_mem_mb": gpu_mem}))
EOF
start_worker 2
python - "$OUT_DIR" <<'EOF'
import json, sys, time
from pathlib import Path
from jobs.client import Client
out = Path(sys.argv[1])
c = Client()
job = c.job(c.store.list_ids()[0])
deadline = time.time() + 1800
while (st := job.status())["state"] not in ("succeeded", "failed", "cancelled") and time.time() < deadline:
    time.sleep(0.5)
resumed = [e for e in job.events() if e["kind"] == "resumed"]
killed = json.loads((out / "killed").read_text())
ok = st["state"] == "succeeded" and st["attempt"] == 2 and bool(resumed) and resumed[0]["epoch"] >= 1
res = {"gpu": (out / "gpu.txt").read_text().strip(), "killed_at_epoch": killed["epoch"],
       "gpu_mem_mb_while_training": killed["gpu_mem_mb"], "state": st["state"], "attempt": st["attempt"],
       "resumed": resumed, "ok": ok}
(out / "gpu_check.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
assert ok, "the job did not resume and succeed on the GPU"
EOF

python -m bench.ckpt_scale --json "$OUT_DIR/ckpt_scale.gpu.json" 2>&1 | tee "$OUT_DIR/ckpt_scale.log"
python -m bench.write_ceiling --json "$OUT_DIR/write_ceiling.gpu.json" 2>&1 | tee "$OUT_DIR/write_ceiling.log"
python -m bench.job_end --jobs 20 --json "$OUT_DIR/job_end.gpu.json" 2>&1 | tee "$OUT_DIR/job_end.log"
echo "GPU check done: $OUT_DIR"
