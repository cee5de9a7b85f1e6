"""Alerts end to end with real processes: a worker trains one job to success and fails another (user code raising),
two supervisors run at once, and a local HTTP endpoint receives exactly one message per event and URL through
``json://`` Apprise URLs (the job's own and the server's TRAIND_NOTIFY), a failing endpoint included (retried with
backoff until it answers). The URL's password shows masked in ``traind status --spec`` and never in the logs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import redis

from jobs.contract import keys
from jobs.contract.events import EventKind
from tests.alerts.hooks import Hooks
from tests.conftest import ROOT, Procs, log_of, wait_for
from tests.fault.helpers import WORKER_START_S, Cluster, wait_terminal

SECRET = "s3cretpass"
BACKOFF_S = 0.3


def test_alerts_reach_a_webhook_once_with_two_supervisors(procs: Procs, redis_url: str, storage_dir: Path,
                                                           r: redis.Redis) -> None:
    with Hooks() as hooks:
        env = {"TRAIND_NOTIFY": hooks.url("default"), "TRAIND_NOTIFY_BACKOFF_S": str(BACKOFF_S),
               "TRAIND_PUBLIC_URL": "https://traind.example.org"}
        c = Cluster(procs, redis_url, storage_dir, env=env)
        c.start("w1", supervisors=2)
        hooks.fail("flaky", 2)
        ok = c.submit({"name": "alert-ok", "model": {"builder": "tests.models:slow_regression",
                                                     "builder_kwargs": {"batch_delay_s": 0.0}},
                       "data": {"loader": "tests.models:load_data"}, "fit": {"epochs": 2, "validation_split": 0.25},
                       "notify": [hooks.url("ok", f"user:{SECRET}@")]})
        bad = c.submit({"name": "alert-bad", "model": {"builder": "tests.models:slow_regression"},
                        "data": {"loader": "tests.models:raising_loader"}, "fit": {"epochs": 2},
                        "notify": [hooks.url("flaky")]})
        c.wait_registered("w1", timeout=WORKER_START_S)
        assert wait_terminal(c.store, ok.id)["state"] == "succeeded", c.logs()
        assert wait_terminal(c.store, bad.id)["state"] == "failed", c.logs()

        got_ok = hooks.wait_count("ok", 1, 30)
        got_flaky = hooks.wait_count("flaky", 1, 30)
        hooks.wait_count("default", 2, 30)
        wait_for(lambda: r.xlen(keys.ALERTS_OUTBOX) == 0, 30, "the outbox to empty")
        # Both supervisors make further passes after the last message: none may send a second copy.
        t = c.store.now_ms() + 1500
        names = [f"{socket.gethostname()}-{p.pid}" for p in c.supervisors]
        wait_for(lambda: all((r.zscore(keys.SUPERVISORS, n) or 0) > t for n in names), 30,
                 "both supervisors to pass 1.5 s after the last alert")

        assert len(hooks.at("ok")) == 1 and len(hooks.at("default")) == 2, hooks.requests
        tries = hooks.at("flaky", ok_only=False)
        assert [q["status"] for q in tries] == [500, 500, 200], tries
        assert tries[1]["t"] - tries[0]["t"] >= BACKOFF_S * 0.9 and tries[2]["t"] - tries[1]["t"] >= BACKOFF_S * 1.8
        assert got_ok[0]["body"]["title"] == "traind: job alert-ok succeeded"
        body = got_ok[0]["body"]["message"]
        assert f"({ok.id})" in body and "state: succeeded" in body and "best: val_loss=" in body
        assert f"https://traind.example.org/#/job/{ok.id}" in body
        assert got_flaky[0]["body"]["title"] == "traind: job alert-bad failed"
        assert "loader exploded on purpose" in got_flaky[0]["body"]["message"]
        assert sorted(q["body"]["title"].rsplit(" ", 1)[1] for q in hooks.at("default")) == ["failed", "succeeded"]
        sent = [e for e in c.store.events(bad.id) if e["kind"] == EventKind.ALERT_SENT.value]
        assert sorted(e["tries"] for e in sent) == [1, 3]  # the default URL at once, the flaky one on its 3rd try

        shown = subprocess.run([sys.executable, "-m", "daemon.cli", "status", ok.id, "--spec", "--redis-url",
                                redis_url], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert f"json://user:****@127.0.0.1:{hooks.port}/ok" in shown.stdout and SECRET not in shown.stdout
        for p in c.supervisors:
            assert SECRET not in Path(p.log_path).read_text(errors="replace"), log_of(p)  # type: ignore[attr-defined]
