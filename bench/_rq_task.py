"""The task plain RQ workers run in ``bench.detection``'s comparison (imported by ``rq worker``, not by traind)."""

from __future__ import annotations

import json
import os
import time


def long_task(key: str, seconds: float) -> str:
    """Record this start (time, work-horse pid, worker pid) in Redis list ``key``, then "train" (sleep)."""
    from rq import get_current_job

    job = get_current_job()
    assert job is not None
    job.connection.rpush(key, json.dumps({"t": time.time(), "pid": os.getpid(), "ppid": os.getppid()}))
    time.sleep(seconds)
    return "done"
