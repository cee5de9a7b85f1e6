"""HTTP to ``traind serve`` (httpx): the bearer token, timeouts, retries of idempotent calls on connection errors,
traind's errors for the API's answers, and every answer's body bounded before it is read.

Answers become errors in one place (:meth:`Transport.raise_for`): 401/403 :class:`~jobs.errors.ApiAuthError` (one
line), 404 :class:`~jobs.errors.JobNotFoundError`, 409 the error the caller names, 413 :class:`~jobs.errors.LimitError`,
422 :class:`~jobs.errors.SpecError` with every problem the server found, anything else :class:`~jobs.errors.ApiError`.

>>> # t = Transport(ApiTarget("https://traind.example", token)); t.json("GET", "/api/v1/jobs/0190.../spec")
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from jobs.errors import ApiAuthError, ApiError, JobNotFoundError, LimitError, SpecError, TraindError
from jobs.remote.target import CA_ENV, ApiTarget

MAX_JSON_BYTES = 64 * 1024**2  # a JSON answer (a job's status with a long history, a page of 1,000 jobs) is bounded
MAX_SSE_LINE_BYTES = 16 * 1024**2
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)  # ~8 s of connection trouble ridden out by idempotent calls
RETRIED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
           httpx.PoolTimeout)


class Transport:
    """One connection pool to one API. Thread-safe (httpx.Client is)."""

    def __init__(self, target: ApiTarget, timeout_s: float = 60.0, client: httpx.Client | None = None,
                 retry_delays_s: tuple[float, ...] | None = None) -> None:
        self.target = target
        self.retry_delays_s = retry_delays_s  # None: RETRY_DELAYS_S (read at call time: tests shorten it)
        self.http = client or httpx.Client(
            base_url=target.url, headers={"Authorization": f"Bearer {target.token}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0), verify=target.verify(),
            # a redirect is never followed: a 3xx is an error, so neither the token nor a request body goes
            # anywhere but the configured URL (httpx alone drops Authorization on a redirect to another origin,
            # tests/remote/test_remote_security.py checks it, but it would resend a 307's body there)
            follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    # -- calls ------------------------------------------------------------------------------------------------------
    def json(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
             idempotent: bool | None = None, conflict: Callable[[str], TraindError] | None = None,
             max_bytes: int = MAX_JSON_BYTES) -> Any:
        """The decoded JSON answer of one call. ``idempotent`` (default: GET/HEAD/PUT) retries connection errors."""
        data = self.call(method, path, params=params, body=body, idempotent=idempotent, conflict=conflict,
                         max_bytes=max_bytes)
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise ApiError(f"{method} {path}: the API answered with {len(data)} bytes that are not JSON") from None

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
             content: bytes | None = None, headers: dict[str, str] | None = None, idempotent: bool | None = None,
             conflict: Callable[[str], TraindError] | None = None, max_bytes: int = MAX_JSON_BYTES,
             absolute: bool = False) -> bytes:
        """The answer's body (at most ``max_bytes``, else ApiError) of a 2xx answer; traind's error otherwise.

        ``absolute``: ``path`` is a full URL (a presigned object-store URL) and gets no Authorization header.
        """
        retry = method in ("GET", "HEAD", "PUT") if idempotent is None else idempotent
        delays = iter((RETRY_DELAYS_S if self.retry_delays_s is None else self.retry_delays_s) if retry else ())
        while True:
            try:
                return self._once(method, path, params, body, content, headers, conflict, max_bytes, absolute)
            except RETRIED as e:
                if _tls_refused(e):  # a certificate that does not verify will not verify on a retry either
                    raise ApiError(f"the traind API at {self._where(path, absolute)} presented a TLS certificate "
                                   f"that does not verify ({_short(str(e), 200)}); for a private CA set {CA_ENV} "
                                   "(or the context's ca_bundle) to its PEM file") from None
                delay = next(delays, None)
                if delay is None:
                    raise ApiError(f"cannot reach the traind API at {self._where(path, absolute)}: "
                                   f"{type(e).__name__}: {e}") from None
                time.sleep(delay)
            except httpx.TimeoutException as e:  # a read timeout: the call may have happened; never repeated
                raise ApiError(f"the traind API at {self._where(path, absolute)} did not answer in time "
                               f"({type(e).__name__})") from None

    def _where(self, path: str, absolute: bool) -> str:
        return path.split("?", 1)[0] if absolute else self.target.url

    def _once(self, method: str, path: str, params: dict[str, Any] | None, body: Any, content: bytes | None,
              headers: dict[str, str] | None, conflict: Callable[[str], TraindError] | None, max_bytes: int,
              absolute: bool) -> bytes:
        kw: dict[str, Any] = {"params": params, "headers": headers}
        if body is not None:
            kw["json"] = body
        if content is not None:
            kw["content"] = content
        if absolute:  # a presigned URL authenticates itself; our token must not travel to the object store
            req = self.http.build_request(method, path, **kw)
            req.headers.pop("Authorization", None)
            resp = self.http.send(req, stream=True)
        else:
            resp = self.http.send(self.http.build_request(method, path, **kw), stream=True)
        try:
            data = read_bounded(resp, max_bytes if resp.is_success else 1024**2, f"{method} {path.split('?')[0]}")
        finally:
            resp.close()
        if resp.is_redirect and not absolute:
            raise ApiError(_redirect_message(self.target.url, resp))
        if not resp.is_success:
            self.raise_for(resp.status_code, data, method, path, conflict, absolute)
        return data

    def stream_lines(self, path: str, params: dict[str, Any] | None = None,
                     headers: dict[str, str] | None = None, read_timeout_s: float = 90.0) -> Iterator[str]:
        """The lines of a streamed answer (an SSE stream), each bounded; connection errors raise ApiError."""
        try:
            with self.http.stream("GET", path, params=params, headers=headers,
                                  timeout=httpx.Timeout(read_timeout_s, connect=10.0)) as resp:
                if resp.is_redirect:
                    raise ApiError(_redirect_message(self.target.url, resp))
                if not resp.is_success:
                    self.raise_for(resp.status_code, read_bounded(resp, 1024**2, path), "GET", path, None, False)
                buf = b""
                for chunk in resp.iter_raw():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        yield line.rstrip(b"\r").decode(errors="replace")
                    if len(buf) > MAX_SSE_LINE_BYTES:
                        raise ApiError(f"GET {path}: a stream line longer than {MAX_SSE_LINE_BYTES} bytes")
        except (httpx.TransportError, httpx.TimeoutException) as e:
            raise ApiError(f"the stream from {self.target.url}{path} broke: {type(e).__name__}: {e}") from None

    # -- answers ----------------------------------------------------------------------------------------------------
    def raise_for(self, code: int, data: bytes, method: str, path: str,
                  conflict: Callable[[str], TraindError] | None, absolute: bool) -> None:
        detail = _detail(data)
        where = f"{method} {path.split('?')[0]}"
        if absolute:  # the object store's own XML error: its Code and Message only (not its echo of the request,
            # e.g. S3's SignatureProvided/CanonicalRequest)
            text = _s3_error(data.decode("utf-8", "replace"))
            raise ApiError(f"the object store refused a presigned {method} ({code}): {text}")
        if code in (401, 403):
            msg = detail if isinstance(detail, str) else "refused"
            raise ApiAuthError(f"the traind API at {self.target.url} refused this token ({code}): {_short(msg)}")
        if code == 404:
            raise JobNotFoundError(_short(str(detail)) if detail else f"{where}: not found")
        if code == 409 and conflict is not None:
            raise conflict(_short(str(detail)))
        if code == 413:
            raise LimitError([_short(str(detail))])
        if code == 422:
            raise SpecError(_problems(detail))
        raise ApiError(f"{where}: the traind API answered {code}: {_short(str(detail))}")


def _tls_refused(e: Exception) -> bool:
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _s3_error(xml: str) -> str:
    """``Code: Message`` of an object store's XML error (else its first 200 characters without a query)."""
    code, msg = re.search(r"<Code>([^<]{0,100})</Code>", xml), re.search(r"<Message>([^<]{0,300})</Message>", xml)
    if code or msg:
        return f"{code.group(1) if code else '?'}: {msg.group(1) if msg else ''}".strip()
    return _short(xml.split("?", 1)[0], 200)


def _redirect_message(base: str, resp: httpx.Response) -> str:
    """One line for a 3xx: where it pointed (scheme, host and path only: a query may carry a credential)."""
    loc = httpx.URL(base).join(resp.headers.get("location", ""))
    where = f"{loc.scheme}://{loc.host}{f':{loc.port}' if loc.port else ''}{loc.path}"
    return (f"the traind API at {base} answered {resp.status_code}, a redirect to {where[:300]}: not followed (the "
            "token would go along); set TRAIND_API_URL (or the context's api_url) to the final URL")


def read_bounded(resp: httpx.Response, max_bytes: int, what: str) -> bytes:
    """At most ``max_bytes`` of a streamed answer: refused from its Content-Length before reading, and the read
    stops one chunk past the limit when there is none (chunked) or it lies."""
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(f"{what}: the answer is {declared} bytes, over the {max_bytes} read here")
    out = bytearray()
    for chunk in resp.iter_raw():  # undecoded: a compressed body cannot inflate past the limit unseen
        out += chunk
        if len(out) > max_bytes:
            raise ApiError(f"{what}: the answer passed the {max_bytes} bytes read here")
    if resp.headers.get("content-encoding", "identity") not in ("identity", ""):
        raise ApiError(f"{what}: unexpected Content-Encoding {resp.headers['content-encoding']!r}")
    return bytes(out)


def _detail(data: bytes) -> Any:
    try:
        body = json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")
    return body.get("detail", body) if isinstance(body, dict) else body


def _problems(detail: Any) -> list[str]:
    """The problems of a 422: traind's ``{"error", "problems"}``, FastAPI's validation list, or a message."""
    if isinstance(detail, dict) and isinstance(detail.get("problems"), list):
        return [str(p) for p in detail["problems"]] or [str(detail.get("error"))]
    if isinstance(detail, list):
        out = []
        for d in detail:
            if isinstance(d, dict):
                loc = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
                out.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
            else:
                out.append(str(d))
        return out or ["refused (422)"]
    return [str(detail)]


def _short(s: str, n: int = 500) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n] + "..."
