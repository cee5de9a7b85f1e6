"""REST API under ``/api/v1`` (OpenAPI schema at ``/openapi.json``).

Reads are the same calls the CLI makes (``GET /api/v1/jobs/{id}`` is ``traind status --json``); submit goes
through :meth:`jobs.client.Client.submit` (same validation, same messages, ``client_key`` idempotency).

traind's errors become HTTP answers in one place, :func:`install_error_handlers` (unknown job 404, a state that
forbids the operation 409, a refused spec 422), so the routes just call the operations.

>>> # httpx.get(f"{base}/api/v1/jobs?state=running", headers={"Authorization": f"Bearer {token}"}).json()
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from daemon.serve import auth
from daemon.serve.sse import ALL, EVENTS_TAIL, Hub, encode, stream
from jobs.contract import keys
from jobs.contract.ids import validate_job_id
from jobs.contract.states import JobState
from jobs.errors import (
    AmbiguousJobIdError,
    IllegalTransitionError,
    InvalidJobIdError,
    JobFinishedError,
    JobNotFoundError,
    SpecError,
    TraindError,
)
from jobs.ops import admin, lookup
from jobs.ops.lookup import summary
from jobs.ops.waiting import no_worker_note, waiting_reason
from jobs.redis.store import JobStore

router = APIRouter(prefix="/api/v1")
MAX_OFFSET = 10_000_000  # every numeric query parameter is bounded: out of range answers 422, never a Redis error
Read = Annotated[auth.Principal, Depends(auth.read)]
Write = Annotated[auth.Principal, Depends(auth.write)]  # a submit or admin token
JobActor = Annotated[auth.Principal, Depends(auth.job_actor)]  # an admin, or a submit token on its own job


class SubmitRequest(BaseModel):
    """A job spec (the YAML file's content as JSON) and an optional idempotency key."""

    spec: dict[str, Any]
    client_key: str | None = Field(None, description="Resubmitting with the same key returns the first job.")
    owner: str | None = Field(None, description="Recorded owner; default the token's name. Only an admin token may "
                              "name another owner (403 for a submit token).")


class SubmitResponse(BaseModel):
    id: str
    state: str
    created: bool


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _client(request: Request) -> Any:
    """The submitting client, built on first use (it imports rq and numpy, which reads do not need)."""
    if request.app.state.client is None:
        from jobs.client import Client

        request.app.state.client = Client(settings=request.app.state.client_settings, connection=_store(request).r)
    return request.app.state.client


def _json(obj: Any) -> Response:
    """Plain ``json.dumps``: the records are already JSON-safe dicts, and FastAPI's response validation of a
    1,000-row page cost more than reading it from Redis."""
    return Response(json.dumps(obj, default=str, separators=(",", ":")), media_type="application/json")


def _hub(request: Request) -> Hub:
    return request.app.state.hub


# Each traind error a route lets through and the status it answers with. The body is FastAPI's HTTPException shape,
# {"detail": "<the error's message>"}, which the dashboard (static/app.js) shows and API clients read.
ERROR_STATUS: dict[type[TraindError], int] = {
    JobNotFoundError: status.HTTP_404_NOT_FOUND,
    AmbiguousJobIdError: status.HTTP_409_CONFLICT,
    JobFinishedError: status.HTTP_409_CONFLICT,  # cancel of a job that already succeeded or failed
    IllegalTransitionError: status.HTTP_409_CONFLICT,  # e.g. retry of a job that is not failed or cancelled
}


def _answer_with(code: int) -> Callable[[Request, TraindError], Awaitable[JSONResponse]]:
    async def handler(request: Request, exc: TraindError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handler


async def _spec_refused(request: Request, exc: SpecError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": {  # the literal: Starlette renamed the constant
        "error": f"job spec refused ({len(exc.problems)} problem(s)); nothing was submitted",
        "problems": exc.problems}})


def install_error_handlers(app: FastAPI) -> None:
    """Answer traind's errors raised by any route: :data:`ERROR_STATUS` with ``{"detail": message}``, and a refused
    spec (:class:`~jobs.errors.SpecError` and its subclasses) with 422 and every problem found:
    ``{"detail": {"error": "job spec refused (N problem(s)); nothing was submitted", "problems": [...]}}``."""
    for exc_type, code in ERROR_STATUS.items():
        app.add_exception_handler(exc_type, _answer_with(code))
    app.add_exception_handler(SpecError, _spec_refused)


def _jid(job_id: str) -> str:
    try:
        return validate_job_id(job_id)
    except InvalidJobIdError as e:  # a malformed id in the path is the request's fault
        raise HTTPException(422, str(e)) from e


def _get(request: Request, job_id: str, with_history: bool = True) -> dict[str, Any]:
    return _store(request).get(_jid(job_id), with_history=with_history)


@router.post("/jobs", status_code=status.HTTP_201_CREATED, response_model=SubmitResponse,
             responses={200: {"model": SubmitResponse, "description": "a replay: the job of this client_key"}})
def submit(body: SubmitRequest, request: Request, response: Response, who: Write) -> SubmitResponse:
    """Validate and submit a spec: 201 with the new job, or 200 with the first job when ``client_key`` was used
    before (a replay). Refused specs answer 422 with every problem (the CLI's messages). The job's owner is the
    token's name (an admin token may set ``owner``)."""
    owner = auth.owner_for(who, body.owner)
    client = _client(request)
    before = None
    if body.client_key:
        before = client.r.get(keys.idempotency(body.client_key))
    handle = client.submit(body.spec, client_key=body.client_key, owner=owner)  # SpecError: 422 (_spec_refused)
    if before is not None:
        response.status_code = status.HTTP_200_OK
    return SubmitResponse(id=handle.id, state=handle.state.value, created=before is None)


@router.get("/jobs")
def list_jobs(request: Request, _: Read,
              state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
              name: Annotated[str | None, Query(max_length=200, description="name contains (case-insensitive)")] = None,
              queue: Annotated[str | None, Query(max_length=200, description="logical queue")] = None,
              owner: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._@-]{1,64}$", description="only this "
                                                 "owner's jobs")] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
              cursor: Annotated[str | None, Query(max_length=64, description="continue after this job id "
                                                  "(the previous page's next_cursor)")] = None) -> Response:
    """A page of job summaries, newest first, with the total count after filtering. A name filter (or state and
    queue together) examines at most ``admin.SCAN_MAX`` jobs per request: ``exact`` says whether ``total`` counted
    every job, ``next_cursor`` continues the listing."""
    try:
        page = admin.list_page(_store(request), state=state.value if state else None, name=name, queue=queue,
                               limit=limit, offset=offset, cursor=_jid(cursor) if cursor else None, owner=owner)
    except ValueError as e:  # a cursor naming no job of this listing
        raise HTTPException(422, str(e)) from e
    return _json(page)


@router.get("/jobs/{job_id}")
def job_status(job_id: str, request: Request, _: Read,
               history: Annotated[bool, Query(description="include the per-epoch history")] = True) -> Response:
    """The job as ``traind status --json`` prints it (without the spec: see ``/jobs/{id}/spec``)."""
    return _json(_with_note(_store(request), summary(_get(request, job_id, with_history=history))))


def _ts(event: Any) -> int:
    try:
        return int(event.get("ts", 0))
    except (AttributeError, TypeError, ValueError):
        return 0


def _with_note(store: JobStore, st: dict[str, Any]) -> dict[str, Any]:
    """``note``: why a queued job is not starting (no live worker for its queue, jobs/ops/waiting.py)."""
    # a multi-device job no live worker can place first (as `traind status` says it), else no live worker at all
    if (note := lookup.placement_note(store.r, st) or no_worker_note(store.r, st, store.now_ms())) is not None:
        st["note"] = note
    if (why := waiting_reason(store.r, st, store.now_ms())) is not None:
        st["waiting"] = why.to_dict()  # the reason and the position (issue 24)
    return st


@router.get("/jobs/{job_id}/spec")
def job_spec(job_id: str, request: Request, _: Read) -> dict[str, Any]:
    """The validated spec the job was submitted with (``traind status --spec``)."""
    spec = _get(request, job_id, with_history=False).get("spec")
    return spec if isinstance(spec, dict) else {}  # a corrupt stored spec: the status lists it under problems


@router.get("/jobs/{job_id}/history")
def job_history(job_id: str, request: Request, _: Read) -> list[dict[str, Any]]:
    """One entry per finished epoch (a redone epoch replaces its entry)."""
    _get(request, job_id, with_history=False)
    return _store(request).history(job_id)


@router.get("/jobs/{job_id}/events")
def job_events(job_id: str, request: Request, _: Read,
               start: Annotated[int, Query(ge=-MAX_OFFSET, le=MAX_OFFSET)] = 0) -> list[dict[str, Any]]:
    """The job's events (oldest first); ``start`` as in LRANGE (negative: the last -start events)."""
    _get(request, job_id, with_history=False)
    return _store(request).events(job_id, start)


@router.get("/jobs/{job_id}/checkpoints")
def job_checkpoints(job_id: str, request: Request, _: Read) -> list[dict[str, Any]]:
    """Committed checkpoint manifests, oldest first."""
    _get(request, job_id, with_history=False)
    # an entry that is not a manifest (corrupt JSON) is the worker's to skip with an event; not shown here
    return [m for _, m in sorted(_store(request).checkpoints(job_id).items()) if isinstance(m, dict)]


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, request: Request, _: JobActor) -> dict[str, Any]:
    """Cancel: a queued job ends now; a running one stops at its next batch boundary."""
    prev = lookup.cancel(_store(request), _jid(job_id))
    return {"id": job_id, "previous": prev.value, "cancel_requested": prev is JobState.RUNNING}


@router.post("/jobs/{job_id}/retry")
def retry(job_id: str, request: Request, _: JobActor) -> dict[str, Any]:
    """Run a failed or cancelled job again from its checkpoint as a new attempt."""
    attempt = admin.retry(_store(request), _jid(job_id))
    return {"id": job_id, "attempt": attempt, "state": JobState.REQUEUED.value}


@router.get("/workers")
def workers(request: Request, _: Read) -> list[dict[str, Any]]:
    """Registered workers: host, device, current job, CPU, RSS, GPU memory, last heartbeat."""
    return admin.workers(_store(request))


@router.get("/queues")
def queues(request: Request, _: Read) -> list[dict[str, Any]]:
    """traind's RQ queues and their depths."""
    return admin.queues(_store(request))


def _sse(request: Request, key: str, snapshot: Any) -> StreamingResponse:
    body = stream(_hub(request), key, snapshot, request.is_disconnected, request.app.state.settings.sse_heartbeat_s)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/stream")
def job_stream(job_id: str, request: Request, _: Read) -> StreamingResponse:
    """Server-Sent Events for one job: ``snapshot`` then ``status``/``epoch``/``events`` as it changes."""
    _get(request, job_id, with_history=False)
    store = _store(request)

    try:  # a reconnecting client has the events up to this ts (a repeat of that ms is possible, never a gap)
        since = int(request.headers.get("last-event-id", ""))
    except ValueError:
        since = None

    def snapshot() -> bytes:
        st = _with_note(store, summary(store.get(job_id, with_history=True)))
        events = store.events(job_id, -EVENTS_TAIL * 4)
        _hub(request).events_sent(job_id, events[-1] if events else None)
        st["events"] = [e for e in events if since is None or _ts(e) >= since]
        return encode("snapshot", st, events[-1].get("ts") if events else None)

    return _sse(request, job_id, snapshot)


@router.get("/stream")
def list_stream(request: Request, _: Read) -> StreamingResponse:
    """Server-Sent Events for the jobs list: one ``job`` row event per changed job."""
    return _sse(request, ALL, None)
