"""The HTTP transport's pure logic against httpx's MockTransport: answers mapped to traind's errors, every body
bounded, only idempotent calls retried on connection errors, the token never sent to a presigned URL."""

from __future__ import annotations

import httpx
import pytest

from daemon.remote_watch import sse_events
from jobs.errors import ApiAuthError, ApiError, JobFinishedError, JobNotFoundError, LimitError, SpecError
from jobs.remote.target import ApiTarget
from jobs.remote.transport import Transport

BASE = "http://api.test"


def answer(code: int, json: object = None, content: bytes | None = None, text: str | None = None) -> httpx.Response:
    """A response streamed like one from the network (MockTransport's pre-read ones cannot be read in chunks)."""
    import json as _json

    body = content if content is not None else text.encode() if text is not None else _json.dumps(json).encode()
    return httpx.Response(code, headers={"content-length": str(len(body))}, stream=httpx.ByteStream(body))


def transport(handler) -> Transport:  # type: ignore[no-untyped-def]
    target = ApiTarget(BASE, "tok-123")
    client = httpx.Client(base_url=BASE, headers={"Authorization": "Bearer tok-123"},
                          transport=httpx.MockTransport(handler))
    return Transport(target, client=client)


def test_answers_become_traind_errors() -> None:
    answers = {
        "/422": answer(422, json={"detail": {"error": "job spec refused (2 problem(s))",
                                                     "problems": ["fit.epochs: >= 1", "model: missing"]}}),
        "/422v": answer(422, json={"detail": [{"loc": ["body", "spec"], "msg": "field required"}]}),
        "/401": answer(401, json={"detail": "invalid bearer token"}),
        "/403": answer(403, json={"detail": "this token is read-only"}),
        "/404": answer(404, json={"detail": "job 0190 not found"}),
        "/409": answer(409, json={"detail": "job 0190 already succeeded"}),
        "/413": answer(413, json={"detail": "upload exceeds TRAIND_MAX_UPLOAD_BYTES=10"}),
        "/500": answer(500, text="Internal Server Error"),
    }
    t = transport(lambda req: answers[req.url.path])
    with pytest.raises(SpecError) as e:
        t.json("POST", "/422", body={})
    assert e.value.problems == ["fit.epochs: >= 1", "model: missing"]
    with pytest.raises(SpecError) as e:
        t.json("POST", "/422v", body={})
    assert e.value.problems == ["spec: field required"]
    for path, code in (("/401", 401), ("/403", 403)):
        with pytest.raises(ApiAuthError) as a:
            t.json("GET", path)
        assert f"refused this token ({code})" in str(a.value) and "\n" not in str(a.value)
        assert "tok-123" not in str(a.value)
    with pytest.raises(JobNotFoundError, match="job 0190 not found"):
        t.json("GET", "/404")
    with pytest.raises(JobFinishedError, match="already succeeded"):
        t.json("POST", "/409", conflict=JobFinishedError)
    with pytest.raises(LimitError):
        t.json("PUT", "/413")
    with pytest.raises(ApiError, match="answered 500"):
        t.json("GET", "/500")


def test_bodies_are_bounded_declared_or_not() -> None:
    def declared(req: httpx.Request) -> httpx.Response:
        return answer(200, content=b"x" * 100)

    with pytest.raises(ApiError, match="over the 10"):
        transport(declared).call("GET", "/big", max_bytes=10)

    def chunked(req: httpx.Request) -> httpx.Response:  # no Content-Length: counted while read
        return httpx.Response(200, content=iter([b"x" * 8] * 100))

    with pytest.raises(ApiError, match="passed the 10"):
        transport(chunked).call("GET", "/big", max_bytes=10)
    assert transport(declared).call("GET", "/ok", max_bytes=100) == b"x" * 100


def test_only_idempotent_calls_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobs.remote.transport.RETRY_DELAYS_S", (0.0, 0.0))
    calls: list[str] = []

    def flaky(req: httpx.Request) -> httpx.Response:
        calls.append(req.method)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=req)
        return answer(200, json={"ok": True})

    assert transport(flaky).json("GET", "/x") == {"ok": True} and calls == ["GET"] * 3
    calls.clear()
    with pytest.raises(ApiError, match="cannot reach the traind API at http://api.test"):
        transport(flaky).json("POST", "/x", body={})  # a POST may have happened: not repeated
    assert calls == ["POST"]


def test_the_token_never_goes_to_a_presigned_url() -> None:
    seen: dict[str, str | None] = {}

    def handler(req: httpx.Request) -> httpx.Response:
        seen[req.url.host] = req.headers.get("authorization")
        return answer(200, content=b"ok")

    t = transport(handler)
    t.call("PUT", "http://bucket.s3.test/k?X-Amz-Signature=abc", content=b"data", absolute=True)
    t.call("GET", "/api/v1/x")
    assert seen == {"bucket.s3.test": None, "api.test": "Bearer tok-123"}


def test_an_object_store_refusal_shows_no_part_of_the_presigned_request() -> None:
    xml = ("<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match</Message>"
           "<SignatureProvided>deadbeef</SignatureProvided><CanonicalRequest>PUT /k X-Amz-Credential=AKIAEXAMPLE"
           "</CanonicalRequest></Error>")
    t = transport(lambda req: answer(403, content=xml.encode()))
    with pytest.raises(ApiError) as e:
        t.call("PUT", "http://bucket.s3.test/k?X-Amz-Signature=deadbeef", content=b"d", absolute=True)
    msg = str(e.value)
    assert "SignatureDoesNotMatch: The signature does not match" in msg, msg
    assert "deadbeef" not in msg and "AKIA" not in msg and "tok-123" not in msg


def test_sse_parsing() -> None:
    lines = ["retry: 2000", "", "event: snapshot", 'data: {"state": "running"}', "", ": keepalive", "",
             "id: 17", "event: events", 'data: [{"msg": "a"}]', "", "event: status", "data: {not json", ""]
    assert list(sse_events(iter(lines))) == [("snapshot", {"state": "running"}, None), ("keepalive", None, None),
                                            ("events", [{"msg": "a"}], "17"), ("status", None, None)]
