"""Sweeps through ``traind serve``: ``/api/v1/sweeps`` equals ``traind sweep status --json``, /metrics counts trials
by state, and the dashboard's sweep page (Playwright + Debian's chromium) follows a real sweep to its end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.client import Client
from jobs.contract.owners import default_owner
from jobs.sweep.controller import SweepController
from tests.conftest import ROOT, Procs, log_of
from tests.serve.conftest import READ_TOKEN, Served
from tests.serve.conftest import served as served  # noqa: F401 - the fixture, shared with tests/serve
from tests.serve.test_metrics import scrape, value
from tests.sweep.conftest import sweep_file, tiny_job

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"


def _submit(cli: Any, tmp_path: Path, **over: Any) -> str:
    data = {"name": "served-sweep", "job": tiny_job(epochs=2), "trials": 2, "parallel": 2,
            "space": {"model.builder_kwargs.units": {"type": "int", "low": 4, "high": 16}}, **over}
    rc, out, err = cli("sweep", "submit", str(sweep_file(tmp_path, data)), "--json")
    assert rc == 0, err
    return json.loads(out)["id"]


def test_api_equals_cli_and_metrics_count_trials(served: Served, cli: Any, tmp_path: Path, redis_url: str,
                                                 storage_dir: Path, r: redis.Redis) -> None:
    sweep_id = _submit(cli, tmp_path)
    SweepController(r, Client(redis_url=redis_url, storage=storage_dir), owner="test").step()  # 2 queued trials
    with served.client(token=READ_TOKEN) as c:
        one = c.get(f"/api/v1/sweeps/{sweep_id}").json()
        assert one == json.loads(cli("sweep", "status", sweep_id, "--json")[1])
        assert [(t["number"], t["state"]) for t in one["trials"]] == [(0, "queued"), (1, "queued")]
        # the trials are the sweep's owner's jobs (fair share, limits), not the controller's
        assert one["owner"] == default_owner() and {Client(redis_url=redis_url, storage=storage_dir).store.record(
            t["job"]).owner for t in one["trials"]} == {one["owner"]}
        listed = c.get("/api/v1/sweeps").json()
        assert [(s["id"], s["state"], s["trials_done"], s["trials_total"]) for s in listed] == [
            (sweep_id, "running", 0, 2)]
        assert c.get("/api/v1/sweeps/nope").status_code == 404
        assert c.get("/api/v1/sweeps/..%2Fx").status_code == 404
        assert c.post(f"/api/v1/sweeps/{sweep_id}/cancel").status_code == 403  # a read token cannot cancel
        assert "/api/v1/sweeps/{sweep_id}" in c.get("/openapi.json").json()["paths"]
    with served.client(token=None) as c:
        assert c.get("/api/v1/sweeps").status_code == 401
    m = scrape(served)
    assert value(m, "traind_sweep_trials", state="queued") == 2
    assert value(m, "traind_sweeps", state="running") == 1
    assert not any("sweep" in k or "job" in k for s in m["traind_sweep_trials"] for k in s.labels if k != "state")
    with served.client() as c:
        assert c.post(f"/api/v1/sweeps/{sweep_id[:8]}/cancel").json() == {"id": sweep_id,
                                                                           "previous_state": "running"}


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed")
def test_sweep_page_follows_a_sweep(served: Served, cli: Any, tmp_path: Path, redis_url: str, storage_dir: Path,
                                    procs: Procs) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    sweep_id = _submit(cli, tmp_path)
    w = procs.worker(redis_url, storage_dir, "--worker-id", "sweep-w")
    sup = procs.supervisor(redis_url, storage_dir, "--interval-s", "0.5")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            # The token as the main dashboard's login form stores it (tests/serve/test_browser.py covers the form).
            context.add_init_script(f"sessionStorage.setItem('traind.token', {json.dumps(READ_TOKEN)})")
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{served.url}/#/")
            page.click("#nav-sweeps")
            expect(page.locator(f'tr[data-sweep="{sweep_id}"]')).to_be_visible(timeout=30_000)
            page.click(f'tr[data-sweep="{sweep_id}"] a')
            try:
                expect(page.locator("#kv")).to_have_attribute("data-state", "succeeded", timeout=240_000)
            except AssertionError:
                raise AssertionError(f"{log_of(w)}\n{log_of(sup)}") from None
            st = json.loads(cli("sweep", "status", sweep_id, "--json")[1])
            rows = page.locator("#trials tbody tr")
            expect(rows).to_have_count(2)
            for t in st["trials"]:
                row = page.locator(f'#trials tr[data-trial="{t["number"]}"]')
                expect(row.locator("[data-state]")).to_have_text("succeeded")
                assert row.locator("a").get_attribute("href") == f"/#/job/{t['job']}"
            best = st["best"]
            expect(page.locator(f'#trials tr[data-trial="{best["number"]}"]')).to_have_class("best-row")
            expect(page.locator("#best-chart circle.best-pt")).to_have_count(len(st["best_over_time"]))
            expect(page.locator('#curves circle[data-series="trial 0"]')).to_have_count(2, timeout=10_000)
            curve = page.locator('#curves a[data-curve="trial 1"]')  # each trial's curve links to its job page
            assert curve.get_attribute("href") == f"/#/job/{st['trials'][1]['job']}"
            page.screenshot(path=str(ARTIFACTS / "dashboard-sweep.png"), full_page=True)
            page.click(f'#trials tr[data-trial="{best["number"]}"] a')  # each trial links to its job page
            expect(page.locator("#kv")).to_have_attribute("data-state", "succeeded", timeout=30_000)
        finally:
            browser.close()
    assert errors == []
