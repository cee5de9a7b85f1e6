"""``/api/v1/tokens``: manage the named API tokens over HTTP with an admin token (what ``traind token`` does with
Redis access): list, add (the token is in the answer, once), revoke. Every running serve sees a change within a
second (:mod:`daemon.serve.auth`).

>>> # httpx.post(f"{base}/api/v1/tokens", json={"name": "ci", "role": "submit"}, headers=admin).json()["token"]
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field

from daemon.serve import auth
from jobs.errors import ConfigError
from jobs.ops.tokens import Role, TokenStore

router = APIRouter(prefix="/api/v1", tags=["tokens"])
Admin = Annotated[auth.Principal, Depends(auth.admin)]
Reader = Annotated[auth.Principal, Depends(auth.read)]


class NewToken(BaseModel):
    name: str = Field(max_length=64, description="The owner recorded on the jobs it submits (A-Z a-z 0-9 . _ @ -).")
    role: Role


def _tokens(request: Request) -> TokenStore:
    return TokenStore(request.app.state.store.r)


@router.get("/whoami")
def whoami(who: Reader) -> dict[str, Any]:
    """The presented token's name and role (any valid token): what the dashboard shows and which actions it offers
    (``cancel``/``retry`` for admin, and for submit on the token's own jobs; the server enforces it regardless).

    >>> # httpx.get(f"{base}/api/v1/whoami", headers=auth).json()  ->  {"name": "alice", "role": "submit"}
    """
    return {"name": who.name, "role": who.role.value}


@router.get("/tokens")
def list_tokens(request: Request, _: Admin) -> list[dict[str, Any]]:
    """Stored tokens: name, role, created_ms, last_used_ms (never a token or its hash)."""
    return [t.to_dict() for t in _tokens(request).records()]


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
def add_token(body: NewToken, request: Request, _: Admin) -> dict[str, Any]:
    """Create a token; the answer holds it, the only time it is ever shown. 409 for a taken or reserved name."""
    store = _tokens(request)
    try:
        token = store.add(body.name, body.role, request.app.state.store.now_ms())
    except ConfigError as e:
        raise HTTPException(status.HTTP_409_CONFLICT if "exists" in str(e) or "reserved" in str(e)
                            else 422, str(e)) from None  # the literal: Starlette renamed the constant
    return {"name": body.name, "role": body.role.value, "token": token}


@router.delete("/tokens/{name}")
def revoke_token(name: str, request: Request, _: Admin) -> dict[str, Any]:
    """Revoke a stored token (404 if there is none of that name; env tokens are changed in serve's environment)."""
    if not _tokens(request).revoke(name[:64]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no stored token named {name[:64]!r}")
    return {"name": name, "revoked": True}
