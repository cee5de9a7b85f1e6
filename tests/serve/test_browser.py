"""The dashboard in a real browser (Playwright + Debian's headless chromium; no browser download): while a real
job trains, the loss curve gains points and the state turns to succeeded; numbers equal the API's (which equals
``traind status --json``). Screenshots are kept in tests/artifacts/ (gitignored)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from daemon import render
from jobs.client import Client
from jobs.ops.tokens import Role, TokenStore
from tests.conftest import ROOT, Procs, log_of
from tests.serve.conftest import READ_TOKEN, TOKEN, Served, slow_spec

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed")


def test_dashboard_follows_a_training_job(served: Served, redis_url: str, storage_dir: Path, procs: Procs) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    client = Client(redis_url=redis_url, storage=storage_dir)
    handle = client.submit(slow_spec(name="browser-job", epochs=8, batch_delay_s=0.12))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # the dashboard runs under its Content-Security-Policy: a blocked script or style would be logged here
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(served.url + "/")
            page.evaluate("localStorage.setItem('traind.token', 'left by an older version')")
            page.fill("#token", READ_TOKEN)
            page.click("#login button[type=submit]")
            row = page.locator(f'tr[data-job="{handle.id}"]')
            expect(row).to_be_visible(timeout=30_000)
            # the token is kept for this tab only, never in persistent storage (an older version's copy removed)
            assert page.evaluate("sessionStorage.getItem('traind.token')") == READ_TOKEN
            page.reload()
            expect(row).to_be_visible(timeout=30_000)
            assert page.evaluate("localStorage.length") == 0
            expect(row.locator("[data-state]")).to_have_text("queued")
            expect(row.locator("td.owner")).to_have_text(client.owner)  # issue 24: the owner column

            page.goto(f"{served.url}/#/job/{handle.id}")
            expect(page.locator("#kv")).to_have_attribute("data-state", "queued", timeout=30_000)
            expect(page.locator('dd[data-field="owner"]')).to_have_text(client.owner)
            # no worker yet: after a few seconds the page says so and how to start one (issue 22 item 5)
            expect(page.locator("#kv-note")).to_contain_text("no live worker serves queue default (cpu)",
                                                             timeout=30_000)
            # a read token is told who it is and offered no action it may not take (the server refuses it anyway)
            expect(page.locator("#whoami")).to_have_text("read (read)")
            expect(page.locator("#cancel")).to_be_hidden()
            expect(page.locator("#retry")).to_be_hidden()

            def job_page_as(token: str) -> Any:
                """A second tab on the same queued job, logged in with ``token``."""
                tab = browser.new_page()
                tab.goto(f"{served.url}/#/job/{handle.id}")
                tab.fill("#token", token)
                tab.click("#login button[type=submit]")
                expect(tab.locator("#kv")).to_have_attribute("data-state", "queued", timeout=30_000)
                return tab

            admin = job_page_as(TOKEN)  # the admin token on the same queued job: cancel is offered
            expect(admin.locator("#whoami")).to_have_text("admin (admin)")
            expect(admin.locator("#cancel")).to_be_visible()
            admin.close()
            # a submit token of another owner: told who it is, offered no cancel on someone else's job
            bob = TokenStore(client.store.r).add("bob-browser", Role.SUBMIT, client.store.now_ms())
            other = job_page_as(bob)  # a token added just now works at once (serve re-checks an unknown one)
            expect(other.locator("#whoami")).to_have_text("bob-browser (submit)")
            expect(other.locator("#cancel")).to_be_hidden()
            other.close()
            w = procs.worker(redis_url, storage_dir, "--worker-id", "browser-w")
            loss_points = page.locator('[data-chart="loss"] circle[data-series="loss"]')
            try:
                expect(page.locator("#kv")).to_have_attribute("data-state", "running", timeout=180_000)
                expect(loss_points).to_have_count(2, timeout=120_000)  # live: points arrive while it trains
            except AssertionError:
                raise AssertionError(log_of(w)) from None
            mid = client.store.get(handle.id)
            assert mid["state"] == "running", "the curve was supposed to grow while the job was still running"
            page.screenshot(path=str(ARTIFACTS / "dashboard-job-running.png"), full_page=True)
            expect(page.locator("#kv")).to_have_attribute("data-state", "succeeded", timeout=180_000)
            expect(loss_points).to_have_count(8, timeout=30_000)
            expect(page.locator('[data-chart="loss"] circle[data-series="val_loss"]')).to_have_count(8)
            expect(page.locator('[data-chart="learning rate"] circle')).to_have_count(8)
            swatch = page.locator('[data-chart="loss"] .legend i').first  # colour set without an inline style
            assert swatch.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(37, 99, 235)"
            page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

            st = client.store.get(handle.id)  # what `traind status --json` prints
            assert page.locator("#kv-epoch").inner_text() == f"{st['epoch']}/{st['epochs']}"
            best = render.fmt_num(st["best_value"])  # 4 significant digits, as the CLI prints it (issue 22 item 6)
            assert page.locator("#kv-best").inner_text() == f"val_loss={best} @ epoch {st['best_epoch']}"
            expect(page.locator("#cancel")).to_be_hidden()  # nothing to cancel or retry on a succeeded job
            expect(page.locator("#retry")).to_be_hidden()
            expect(page.locator("#kv-note")).to_have_count(0)
            ticks = page.locator('[data-chart="loss"] text.ytick').all_text_contents()
            decimals = {len(t.split(".")[1]) if "." in t else 0 for t in ticks}
            assert len(ticks) >= 3 and len(decimals) == 1 and "e" not in "".join(ticks), ticks  # one axis format
            assert page.locator("#kv-restarts").inner_text() == str(st["restarts"])
            assert page.locator("#events div").count() == len(client.store.events(handle.id))
            assert page.locator("#ckpts tr").count() >= 2

            page.goto(f"{served.url}/#/")
            row = page.locator(f'tr[data-job="{handle.id}"]')
            expect(row.locator("[data-state]")).to_have_text("succeeded", timeout=30_000)
            assert row.locator("td.epoch").inner_text() == "8/8"
            assert row.locator("td.best").inner_text() == f"val_loss={best} @ {st['best_epoch']}"
            page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"), full_page=True)

            page.goto(f"{served.url}/#/workers")
            expect(page.locator('tr[data-worker="browser-w"]')).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-workers.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()


def test_dashboard_asks_for_a_token_and_serves_its_own_assets(served: Served) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            external: list[str] = []
            page.on("request", lambda req: external.append(req.url) if not req.url.startswith(served.url) else None)
            page.goto(served.url + "/")
            expect(page.locator("#login")).to_be_visible()
            page.fill("#token", "not-" + TOKEN)
            page.click("#login button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("invalid bearer token", timeout=30_000)
            assert external == []  # no CDN: every asset comes from traind
        finally:
            browser.close()
