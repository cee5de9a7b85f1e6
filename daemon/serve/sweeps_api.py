"""``/api/v1/sweeps``: the sweeps and their trials, as ``traind sweep list --json`` / ``status --json`` print them.

Included by :func:`daemon.serve.app.create_app`; the same bearer tokens as the job routes (reads: any token;
cancel: an admin token, as sweeps record no owner). An unknown sweep is a 404 through the app's error handlers.

>>> # httpx.get(f"{base}/api/v1/sweeps/{sweep_id}", headers={"Authorization": f"Bearer {token}"}).json()["best"]
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from daemon.serve import auth
from jobs.sweep import records
from jobs.sweep.records import SweepStore

router = APIRouter(prefix="/api/v1", tags=["sweeps"])
Read = Annotated[auth.Principal, Depends(auth.read)]
Write = Annotated[auth.Principal, Depends(auth.write)]
_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")


def _sweeps(request: Request) -> SweepStore:
    return SweepStore(request.app.state.store.r)


def _sid(sweep_id: str) -> str:
    if not _ID.fullmatch(sweep_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id[:80]!r} not found")
    return sweep_id


@router.get("/sweeps")
def list_sweeps(request: Request, _: Read,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Sweeps, newest first: id, name, state, objective, trials done/total, state counts, best trial."""
    return records.summaries(_sweeps(request), limit)


@router.get("/sweeps/{sweep_id}")
def sweep_status(sweep_id: str, request: Request, _: Read) -> dict[str, Any]:
    """One sweep (id or unique prefix): trials (number, job, state, params, value, epochs_done, restarts, pruned),
    best, best_over_time, the Optuna study's name and journal prefix."""
    store = _sweeps(request)
    return records.status(store, store.resolve(_sid(sweep_id)))


@router.post("/sweeps/{sweep_id}/cancel")
def cancel_sweep(sweep_id: str, request: Request, who: Write) -> dict[str, Any]:
    """Ask the controller to cancel the sweep's running trials and start no new one: an admin token, or a submit
    token whose name is the sweep's owner."""
    store = _sweeps(request)
    sid = store.resolve(_sid(sweep_id))
    owner = store.get(sid).owner
    if who.role is not auth.Role.ADMIN and owner != who.name:
        mine = f"belongs to {owner[:64]!r}" if owner else "records no owner"
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"sweep {sid} {mine}: token {who.name!r} (role "
                            f"{who.role.value}) may only cancel its own sweeps")
    return {"id": sid, "previous_state": store.request_cancel(sid)}
