"""What a laptop needs from ``traind serve`` besides the job routes of :mod:`daemon.serve.api`, so that it holds a URL
and a token and no Redis or object-store credentials (issue 26, :mod:`jobs.remote`):

- ``GET /api/v1/client/config``: the limits and allowlist the server validates with (the client checks the same);
- uploads of ``fit``'s data and initial weights, content-addressed (``uploads/<sha256>.npz``,
  ``uploads/ds-<sha256>.tar``): ``POST /api/v1/uploads`` says whether the object exists and hands out a presigned
  PUT URL (object storage: scoped to that one key, valid ``TRAIND_PRESIGN_S`` seconds) or the API path;
  ``PUT /api/v1/uploads/{kind}/{sha256}`` streams the body to a temporary file, bounded by
  ``TRAIND_MAX_UPLOAD_BYTES`` (declared length checked before reading, counted while reading) and publishes it only
  when its sha256 is the name; ``POST .../verify`` checks an object PUT through a presigned URL, deleting it on a
  mismatch;
- downloads of a job's files (``load_model``): ``GET /api/v1/jobs/{id}/file?key=...`` through the API, or
  ``/file-url`` for a presigned GET; only keys under ``jobs/<id>/`` and the job's own initial weights. The client
  verifies every file against the sha256 Redis recorded;
- ``GET /api/v1/jobs/{id}/checkpoint-index``, ``GET /api/v1/resolve/{prefix}`` and ``GET /api/v1/cli/list`` (the
  rows ``traind list`` prints: short handles, monitors).

>>> # app.include_router(router)   (daemon/serve/app.py)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from daemon.serve.api import Read, Write, _jid, _json, _store
from jobs.contract.states import JobState
from jobs.errors import LimitError
from jobs.storage.base import DIGEST_RE, Storage
from jobs.storage.limits import READ_CHUNK
from jobs.storage.names import upload_key, validate_key

router = APIRouter(prefix="/api/v1")
UPLOAD_PREFIX = "/api/v1/uploads/"  # PUT bodies here are bounded by TRAIND_MAX_UPLOAD_BYTES, not MAX_BODY_BYTES
Kind = Literal["npz", "dataset"]


def body_limits(settings: Any) -> dict[str, int]:
    """Path prefixes whose request bodies the gate (daemon/serve/guard.py) bounds differently."""
    return {UPLOAD_PREFIX: int(settings.max_upload_bytes)}


def _key(kind: str, digest: str) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise HTTPException(422, f"sha256: expected 64 lowercase hex characters, received {digest[:80]!r}")
    return upload_key(digest) if kind == "npz" else f"uploads/ds-{digest}.tar"


def _too_large(msg: str) -> HTTPException:
    return HTTPException(413, msg, headers={"Connection": "close"})


def _storage(request: Request) -> Storage:
    st = getattr(request.app.state, "blob_storage", None)
    if st is None:
        from jobs.storage.factory import open_storage

        s = request.app.state.settings
        st = request.app.state.blob_storage = open_storage(s.storage_dir, retry_s=s.storage_retry_s)
    return st


def _limit(request: Request) -> int:
    return int(request.app.state.settings.max_upload_bytes)


def presign(storage: Storage, key: str, method: Literal["put_object", "get_object"], expires_s: int) -> str | None:
    """A URL for one object (``key``), valid ``expires_s`` seconds, or None where the storage has none (a local
    directory, a non-S3 store, presigning turned off with ``TRAIND_PRESIGN_S=0``). Signed with the server's own
    credentials (the standard AWS environment), which the laptop never sees."""
    if expires_s <= 0 or storage.is_local or getattr(storage, "protocol", None) != "s3":
        return None
    bucket = getattr(storage, "bucket")  # noqa: B009 (ObjectStorage's; the base type has none)
    obj = storage._p(key).split("/", 1)[1]  # type: ignore[attr-defined]
    return str(_signer().generate_presigned_url(method, Params={"Bucket": bucket, "Key": obj}, ExpiresIn=expires_s))


@functools.lru_cache(maxsize=1)
def _signer() -> Any:
    """One botocore S3 client per process (signing is local: no request is made). SigV4, so the expiry is part of
    what is signed (X-Amz-Expires); endpoint, region and keys from the standard AWS environment."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client("s3", config=Config(signature_version="s3v4"))


@router.get("/client/config")
def client_config(request: Request, _: Read) -> dict[str, Any]:
    """The limits and the allowlist this server validates specs and uploads with."""
    s = request.app.state.settings
    return {"max_upload_bytes": s.max_upload_bytes, "max_spec_bytes": s.max_spec_bytes, "max_epochs": s.max_epochs,
            "allowed_modules": list(s.allowed_modules), "max_model_params": s.max_model_params,
            "presign_s": s.presign_s}


class UploadRequest(BaseModel):
    kind: Kind = Field(description="npz: arrays (np.savez, no pickle); dataset: a tar of tf.data's Dataset.save")
    sha256: str = Field(max_length=64)
    size: int = Field(ge=0)


@router.post("/uploads")
def start_upload(body: UploadRequest, request: Request, _: Write) -> dict[str, Any]:
    """Where to upload ``kind``/``sha256``: nowhere when it is stored already, else a presigned PUT URL (object
    storage) and the API path (the fallback)."""
    key = _key(body.kind, body.sha256)
    if body.size > _limit(request):
        raise _too_large(f"upload of {body.size} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={_limit(request)}")
    storage = _storage(request)
    if storage.exists(key):
        return {"exists": True}
    expires = int(request.app.state.settings.presign_s)
    return {"exists": False, "put_url": presign(storage, key, "put_object", expires), "expires_s": expires,
            "path": f"{UPLOAD_PREFIX}{body.kind}/{body.sha256}"}


@router.put("/uploads/{kind}/{sha256}")
async def upload(kind: Kind, sha256: str, request: Request, _: Write) -> dict[str, Any]:
    """Stream the body to storage under its content address; refused (413) past TRAIND_MAX_UPLOAD_BYTES, before
    reading when the length is declared; refused (422) and never published when its sha256 differs."""
    key, limit = _key(kind, sha256), _limit(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(f"upload of {declared} bytes exceeds TRAIND_MAX_UPLOAD_BYTES={limit}; nothing was stored")
    storage = _storage(request)
    h, size = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix="traind-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(f"upload passed TRAIND_MAX_UPLOAD_BYTES={limit} bytes; nothing was stored")
                h.update(chunk)
                await asyncio.to_thread(f.write, chunk)
        if h.hexdigest() != sha256:
            raise HTTPException(422, f"upload refused: its sha256 is {h.hexdigest()}, not {sha256} (corrupted in "
                                "transit?); nothing was stored")
        if not await run_in_threadpool(storage.exists, key):
            await run_in_threadpool(storage.put_local_file, key, Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"stored": key, "size": size}


@router.post("/uploads/{kind}/{sha256}/verify")
def verify_upload(kind: Kind, sha256: str, request: Request, _: Write) -> dict[str, Any]:
    """Check an object PUT through a presigned URL: its size and sha256; deleted (and 422) when they are wrong."""
    key, limit = _key(kind, sha256), _limit(request)
    storage = _storage(request)
    try:
        digest, size = _hash_object(storage, key, limit)
    except FileNotFoundError:
        raise HTTPException(404, f"upload {kind}/{sha256} is not in storage: PUT it first") from None
    except LimitError as e:
        storage.delete(key)
        raise _too_large(e.problems[0]) from None
    if digest != sha256:
        storage.delete(key)
        raise HTTPException(422, f"upload refused: the object's sha256 is {digest}, not {sha256}; it was deleted")
    return {"stored": key, "size": size}


def _hash_object(storage: Storage, key: str, limit: int) -> tuple[str, int]:
    """sha256 and size of a stored object, read in chunks (never past ``limit``: LimitError)."""
    h, size = hashlib.sha256(), 0
    fs = getattr(storage, "fs", None)
    if fs is None:  # local: read_bytes is already bounded
        data = storage.read_bytes(key, limit, f"upload {key}")
        return hashlib.sha256(data).hexdigest(), len(data)
    path = storage._p(key)  # type: ignore[attr-defined]
    if int(fs.info(path).get("size") or 0) > limit:
        raise LimitError([f"upload {key} exceeds TRAIND_MAX_UPLOAD_BYTES={limit}; it was deleted"])
    with fs.open(path, "rb", block_size=1 << 22, cache_type="none") as f:
        while block := f.read(1 << 22):
            size += len(block)
            if size > limit:
                raise LimitError([f"upload {key} exceeds TRAIND_MAX_UPLOAD_BYTES={limit}; it was deleted"])
            h.update(block)
    return h.hexdigest(), size


# -- a job's files (load_model) --------------------------------------------------------------------------------------
def _job_key(request: Request, job_id: str, key: str) -> str:
    """``key`` when this job may be read through it: its own files, or the initial weights its spec names."""
    jid = _jid(job_id)
    st = _store(request).get(jid, with_history=False, with_goodput=False)  # JobNotFoundError: 404
    key = validate_key(key)
    if key.startswith(f"jobs/{jid}/"):
        return key
    weights = ((st.get("spec") or {}).get("model") or {}).get("initial_weights")
    if isinstance(weights, str) and DIGEST_RE.fullmatch(weights) and key == upload_key(weights):
        return key
    raise HTTPException(403, f"key {key[:200]!r} is not a file of job {jid}")


@router.get("/workers/drained")
def drained_machines(request: Request, _: Read) -> list[dict[str, Any]]:
    """Machines drained as lemons (``traind workers`` prints them; ``traind undrain HOST/DEVICE`` puts one back):
    ``[{"machine", "since_ms", "reason"}]``, at most 1,000."""
    from jobs.redis import lemons

    return [{"machine": m, "since_ms": info.get("since_ms"), "reason": str(info.get("reason") or "")[:500]}
            for m, info in sorted(lemons.drained(_store(request).r).items())]


@router.get("/jobs/{job_id}/file-url")
def job_file_url(job_id: str, request: Request, _: Read,
                 key: Annotated[str, Query(max_length=512)]) -> dict[str, Any]:
    """A presigned GET URL for one of the job's files, or ``url: null`` (then GET ``/file``)."""
    key = _job_key(request, job_id, key)
    expires = int(request.app.state.settings.presign_s)
    return {"url": presign(_storage(request), key, "get_object", expires), "expires_s": expires}


@router.get("/jobs/{job_id}/file")
def job_file(job_id: str, request: Request, _: Read, key: Annotated[str, Query(max_length=512)]) -> Response:
    """One of the job's files (a checkpoint, an export, its initial weights), streamed in chunks and bounded by
    TRAIND_MAX_UPLOAD_BYTES (413 when larger). The client checks it against the sha256 Redis recorded."""
    key = _job_key(request, job_id, key)
    storage, limit = _storage(request), _limit(request)
    try:
        if storage.is_local:
            path = storage.path(key)  # type: ignore[attr-defined]
            size = path.stat().st_size
        else:
            path = storage._p(key)  # type: ignore[attr-defined]
            size = int(storage.fs.info(path).get("size") or 0)  # type: ignore[attr-defined]
    except FileNotFoundError:
        raise HTTPException(404, f"{key} is not in storage") from None
    if size > limit:
        raise _too_large(f"{key} is {size} bytes, over TRAIND_MAX_UPLOAD_BYTES={limit}")
    if storage.is_local:
        return FileResponse(path, media_type="application/octet-stream")

    def chunks() -> Iterator[bytes]:  # Starlette runs a sync iterator in its threadpool
        with storage.fs.open(path, "rb", block_size=READ_CHUNK, cache_type="none") as f:  # type: ignore[attr-defined]
            sent = 0
            while sent < size and (block := f.read(min(READ_CHUNK, size - sent))):
                sent += len(block)
                yield block

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={"Content-Length": str(size)})


@router.get("/jobs/{job_id}/checkpoint-index")
def checkpoint_index(job_id: str, request: Request, _: Read) -> Response:
    """The committed checkpoint index, ``{key: manifest}`` (what ``load_model`` chooses from)."""
    jid = _jid(job_id)
    store = _store(request)
    store.get(jid, with_history=False, with_goodput=False)
    return _json({str(k): v for k, v in store.checkpoints(jid).items()})


# -- what the CLI shows ----------------------------------------------------------------------------------------------
@router.get("/resolve/{ref}")
def resolve(ref: str, request: Request, _: Read) -> dict[str, str]:
    """The full id of a job id or unique prefix (404 none, 409 ambiguous, 422 malformed)."""
    from jobs.errors import InvalidJobIdError
    from jobs.ops.lookup import resolve_job_id

    try:
        return {"id": resolve_job_id(_store(request).r, ref)}
    except InvalidJobIdError as e:
        raise HTTPException(422, str(e)) from e


@router.get("/cli/list")
def cli_list(request: Request, _: Read, state: JobState | None = None,
             limit: Annotated[int | None, Query(ge=1, le=100_000)] = None) -> Response:
    """``traind list``'s rows: the jobs (newest first) with their short handles (``handle``) and monitors."""
    from daemon.handles import with_handles, with_monitors

    store = _store(request)
    jobs = with_monitors(store.r, store.list(state.value if state else None, limit))
    handles = with_handles(store.r, [{"id": j["id"]} for j in jobs])
    return _json({"now_ms": store.now_ms(), "jobs": [{**j, "handle": h["id"]} for j, h in zip(jobs, handles)]})
