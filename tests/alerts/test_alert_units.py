"""The pure parts of alerts: which events alert, the message, the retry schedule, targets, URL checks and
redaction, the settings and spec fields. No Redis, no processes."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from jobs.alerts.kinds import alert_of, outbox_event
from jobs.alerts.message import FIELD_MAX, compose, retry_delay_s
from jobs.alerts.sender import parse_tries, stored_urls, targets
from jobs.alerts.urls import ScrubFilter, redact, secret_fragments, shape_problem, split_setting, stored_spec_fields
from jobs.contract.events import event
from jobs.contract.records import JobRecord
from jobs.contract.spec import validate_spec
from jobs.errors import SpecError
from jobs.settings import SupervisorSettings


@pytest.mark.parametrize(("ev", "alert"), [
    ({"kind": "failed"}, "failed"), ({"kind": "succeeded"}, "succeeded"), ({"kind": "hung"}, "hung"),
    ({"kind": "preempted"}, "preempted"), ({"kind": "requeued", "lost_at_ms": 5}, "lost_worker"),
    ({"kind": "requeued"}, None), ({"kind": "retried"}, None), ({"kind": "cancelled"}, None),
    ({"kind": "epoch"}, None), ({"kind": "alert_failed"}, None), ({}, None),
])
def test_which_events_alert(ev: dict[str, object], alert: str | None) -> None:
    assert alert_of(ev) == alert


def test_outbox_event_is_slim_and_bounded() -> None:
    ev = {**event("hung", "m" * 5000, "error", epoch=3, stacks="x" * 30_000), "nested": {"a": 1}}
    slim = json.loads(outbox_event(ev))
    assert len(slim["msg"]) == 1000 and slim["epoch"] == 3 and "stacks" not in slim and "nested" not in slim


def test_retry_delays_double_up_to_the_cap() -> None:
    assert [retry_delay_s(n, 5.0, 60.0) for n in range(1, 7)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert retry_delay_s(10_000, 1.0, 600.0) == 600.0  # no overflow for absurd counts


def test_message_names_job_state_reason_progress_best_and_link() -> None:
    rec = JobRecord.parse({"name": "mnist", "state": "running", "owner": "ada", "epoch": "4", "epochs": "10",
                           "best_value": "0.0412", "best_epoch": "3", "restarts": "1", "worker": "w2",
                           "error": "e" * 2000,
                           "spec": json.dumps({"checkpoint": {"monitor": "val_acc"}})})
    title, body = compose("failed", "1a2b", rec, {"msg": "failed: boom", "state": "failed"}, "https://t.example/")
    assert title == "traind: job mnist failed"
    assert body.splitlines()[:5] == ["job: mnist (1a2b)", "event: failed", "state: failed", "owner: ada",
                                     "reason: failed: boom"]
    assert f"error: {'e' * (FIELD_MAX - 3)}..." in body
    assert "progress: epoch 4/10, restarts 1" in body and "best: val_acc=0.0412 at epoch 3" in body
    assert body.endswith("dashboard: https://t.example/#/job/1a2b")
    title, body = compose("lost_worker", "9z", JobRecord.parse({}), {}, None)
    assert title == "traind: job 9z lost its worker" and "dashboard" not in body and "best" not in body


def test_targets_the_jobs_then_the_servers_each_url_once() -> None:
    got = targets(["json://a/1", "json://a/1", "json://b/2"], ["json://b/2", "json://c/3"])
    assert [(t.key[0], t.url) for t in got] == [("s", "json://a/1"), ("s", "json://b/2"), ("d", "json://c/3")]
    assert targets([], ["json://c/3"])[0].key == targets(["json://x/y"], ["json://c/3"])[1].key  # stable per URL


def test_stored_fields_parse_defensively() -> None:
    assert parse_tries(b"3:1700") == (3, 1700) and parse_tries(b"junk:") == (0, 0)
    assert stored_urls(b'["json://a/x", 5, "no scheme"]') == ["json://a/x"]
    assert stored_urls(b"{not json") == [] and stored_urls(b'{"a": 1}') == [] and stored_urls(None) == []
    assert stored_urls(b"[" + b'"json://a/x",' * 50_000 + b'"x"]') == []  # bounded before parsing


def test_url_shapes_never_quote_the_url() -> None:
    assert shape_problem("json://h/p") is None and shape_problem("slack://T/B/C") is None
    for bad in ("http//x", "json://a b", "j\x1bson://x", "://x", "x" * 3000):
        problem = shape_problem(bad)
        assert problem and bad[:20] not in problem


@pytest.mark.parametrize(("url", "shown"), [
    ("json://user:pw12345@127.0.0.1:8000/hook", "json://user:****@127.0.0.1:8000/hook"),
    ("json://127.0.0.1:8000/x?+X-Key=secretkey", "json://127.0.0.1:8000/x?***"),
    ("slack://T1ABCDEFG/B1ABCDEFG/C1abcdefghijk", "slack://T...G/B...G/C...k//"),
    ("discord://1234567890/abcdefghijklmnopqrstuvwxyz", "discord://1...0/a...z/"),
    ("mailto://user:mailpass@gmail.com", "mailtos://user:****@gmail.com/"),
    ("nosuch://whatever", "nosuch://***"),
    ("not a url", "?://***"),
])
def test_redaction_uses_apprises_privacy_form(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_scrub_filter_removes_secret_fragments_from_log_lines() -> None:
    url = "slack://T1ABCDEFG/B1ABCDEFG/C1abcdefghijk"
    assert secret_fragments(url, redact(url)) == {"T1ABCDEFG", "B1ABCDEFG", "C1abcdefghijk"}
    f = ScrubFilter()
    f.add(url, redact(url))
    rec = logging.LogRecord("apprise", logging.WARNING, __file__, 1, "posting to %s failed", (url,), None)
    assert f.filter(rec) and rec.getMessage() == "posting to slack://***/***/*** failed"


def test_stored_spec_masks_notify_and_keeps_the_urls_aside() -> None:
    out = stored_spec_fields({"name": "x", "notify": ["json://u:hidden99@h.example/x"]})
    assert out["spec"]["notify"] == ["json://u:****@h.example/x"]
    assert out["notify_urls"] == ["json://u:hidden99@h.example/x"]
    assert stored_spec_fields({"name": "x", "notify": []}) == {"spec": {"name": "x", "notify": []}}


def test_spec_notify_field_bounds_and_apprise_check() -> None:
    base = {"name": "n", "model": {"builder": "m:f"}, "data": {"loader": "m:g"}, "fit": {"epochs": 1}}
    assert validate_spec({**base, "notify": ["json://h/x"]}).notify == ["json://h/x"]
    assert validate_spec(base).notify == []
    with pytest.raises(SpecError) as e:
        validate_spec({**base, "notify": ["json://u:topsecret1@h/x", "bad url topsecret2", "nosuch://topsecret3"]},
                      check_notify=True)
    assert [p.split(":")[0] for p in e.value.problems] == ["notify.1", "notify.2"]
    assert "topsecret" not in str(e.value.problems)
    validate_spec({**base, "notify": ["nosuch://x"]})  # workers (no check_notify) never load Apprise for it


def test_notify_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIND_NOTIFY", "json://u:envsecret1@127.0.0.1:9/a, json://127.0.0.1:9/b")
    monkeypatch.setenv("TRAIND_NOTIFY_EVENTS", "failed,hung")
    s = SupervisorSettings()
    assert [u.get_secret_value() for u in s.notify][1] == "json://127.0.0.1:9/b"
    assert s.notify_events == ["failed", "hung"]
    assert "envsecret1" not in repr(s)
    assert split_setting(",a://x,,b://y ,") == ["a://x", "b://y"]
    monkeypatch.setenv("TRAIND_NOTIFY", "json://127.0.0.1:9/a,nosuch://envsecret2,slack://T1")
    monkeypatch.setenv("TRAIND_NOTIFY_EVENTS", "failed,exploded")
    with pytest.raises(ValidationError) as e:
        SupervisorSettings()
    text = str(e.value)
    assert "TRAIND_NOTIFY.1" in text and "TRAIND_NOTIFY.2" in text and "exploded" in text and "envsecret2" not in text
