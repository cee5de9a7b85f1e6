"""SSE viewers for ``bench.scale``: many concurrent ``/api/v1/jobs/{id}/stream`` readers in one asyncio process.

Each viewer follows one running job; for every ``status`` event it records the fan-out delay: the time it read the
event minus the job's ``updated_at`` (the Redis clock of the write that changed it; the same machine's clock). When
its job leaves ``running`` it follows another running job.

    python -m bench._scale_viewers BASE_URL TOKEN VIEWERS SECONDS OUT_JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx


async def _running(c: httpx.AsyncClient) -> list[str]:
    resp = await c.get("/api/v1/jobs", params={"state": "running", "limit": 1000})
    return [row["id"] for row in resp.json()["items"]]


async def viewer(c: httpx.AsyncClient, i: int, jobs: list[str], end: float, out: dict[str, Any]) -> None:
    job = jobs[i % len(jobs)] if jobs else None
    while time.time() < end:
        if job is None:
            await asyncio.sleep(0.5)
            ids = await _running(c)
            job = ids[i % len(ids)] if ids else None
            continue
        try:
            async with c.stream("GET", f"/api/v1/jobs/{job}/stream", timeout=httpx.Timeout(10, read=30)) as resp:
                kind, seen = None, 0
                async for line in resp.aiter_lines():
                    if time.time() >= end:
                        return
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind in ("status", "snapshot"):
                        d = json.loads(line[6:])
                        now_ms = time.time() * 1000
                        upd = d.get("updated_at")
                        # Only a status carrying a new write counts: a notification without one (an event added by
                        # the supervisor) re-sends the last updated_at, which says nothing about the delay.
                        if kind == "status" and isinstance(upd, int) and upd > seen:
                            out["delays_s"].append((now_ms - upd) / 1000)
                        if isinstance(upd, int):
                            seen = max(seen, upd)
                        out["events"] += 1
                        if d.get("state") != "running":
                            break
        except (httpx.HTTPError, ValueError) as e:
            out["errors"].append(f"{type(e).__name__}: {e}"[:200])
            await asyncio.sleep(0.2)
        out["reconnects"] += 1  # the job ended (or the stream broke): follow another running job
        ids = await _running(c)
        job = ids[(i * 7 + out["reconnects"]) % len(ids)] if ids else None


async def amain(base: str, token: str, n: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"delays_s": [], "events": 0, "reconnects": 0, "errors": []}
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=30) as c:
        jobs = await _running(c)
        end = time.time() + seconds
        await asyncio.gather(*(viewer(c, i, jobs, end, out) for i in range(n)))
    out["viewers"] = n
    out["errors"] = out["errors"][:20]
    return out


def main(argv: list[str] | None = None) -> int:
    base, token, n, seconds, path = (argv or sys.argv[1:])[:5]
    res = asyncio.run(amain(base, token, int(n), float(seconds)))
    with open(path, "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
