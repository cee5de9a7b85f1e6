"""Issue 21 items 1 and 3 against a real ``traind serve`` and redis-server, with figures: a 300 MB body declared
without a token, a 300 MB chunked body with one, and three posts of a 268M-weight inline config; each with the time
to the answer and serve's RSS before and after. ``python -m bench.serve_attacks`` (docs/security.md quotes a run).

The requests are the regression tests' (tests/security/serve_helpers.py, test_serve_model_cost.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    os.environ["TRAIND_ALLOWED_MODULES"] = "examples"
    from testkit.cluster import RedisServer
    from tests.conftest import Procs
    from tests.security.serve_helpers import TOKEN, post_chunked, post_partial, start_serve
    from tests.security.test_serve_model_cost import _attack

    tmp = Path(tempfile.mkdtemp(prefix="serve-attacks-"))
    (tmp / "redis").mkdir()
    (tmp / "storage").mkdir()
    srv = RedisServer(tmp / "redis").start()
    procs = Procs(tmp)
    try:
        sp = start_serve(procs, srv.url, tmp / "storage")
        rss0, t0 = sp.rss_mib(), time.monotonic()
        a = post_partial(sp.port, "/api/v1/jobs", declared=300_000_000, send=1 << 20)
        print(f"300 MB declared, no token: {a.status} after {time.monotonic() - t0:.3f} s with {a.sent} bytes sent; "
              f"RSS {rss0:.0f} -> {sp.rss_mib():.0f} MiB")
        rss0, t0 = sp.rss_mib(), time.monotonic()
        a = post_chunked(sp.port, "/api/v1/jobs", total=300_000_000, token=TOKEN)
        print(f"300 MB chunked, full token: {a.status} after {time.monotonic() - t0:.3f} s with "
              f"{a.sent / 2**20:.0f} MiB sent; RSS {rss0:.0f} -> {sp.rss_mib():.0f} MiB")
        with sp.client() as c:
            small = _attack()
            for layer in small["model"]["config"]["config"]["layers"]:
                if layer["class_name"] == "Dense":
                    layer["config"]["units"] = 3
            code = c.post("/api/v1/jobs", json={"spec": small}).status_code
            print(f"a 12k-weight inline config (loads Keras in serve): {code}")
            rss0, t0 = sp.rss_mib(), time.monotonic()
            for _ in range(3):
                resp = c.post("/api/v1/jobs", json={"spec": _attack()})
            print(f"268M-weight inline config x3: {resp.status_code} in {(time.monotonic() - t0) / 3:.3f} s each; "
                  f"RSS {rss0:.0f} -> {sp.rss_mib():.0f} MiB")
    finally:
        procs.kill_all()
        srv.stop()


if __name__ == "__main__":
    main()
