"""The served dashboard, driven in a real headless Chromium (Debian's, through Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from batchml.data.ingest import ingest
from batchml.monitoring import monitor_run, read_table
from batchml.score.scoring import ScoreConfig, score
from tests.conftest import CLASSES, copy_store, free_port, make_image, wait_for_port

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("BATCHML_SCREENSHOTS", Path(__file__).parent / "screenshots"))
MODEL = "shapes/production"


@pytest.fixture(scope="module")
def store(client, trained_store, tmp_path_factory):
    """Two monitored nights with different accuracies, and failure cases."""
    tmp = tmp_path_factory.mktemp("dash")
    s = copy_store(trained_store, tmp / "store")
    night = tmp / "night" / "test"
    for label, name in enumerate(CLASSES):
        (night / name).mkdir(parents=True)
        for i in range(10):  # a third of the circles are filed under 'square'
            true = 0 if (label == 1 and i < 5) else label
            (night / name / f"{i}.png").write_bytes(make_image(true, 5000 + 10 * label + i))
    for i in range(6):
        (night / f"u{i}.png").write_bytes(make_image(i % 3, 6000 + i))
    ingest(s, str(tmp / "night"), "night-b", "test", classes=CLASSES, verbose=False)
    for run_id, dataset in (("night-a", "shapes-test"), ("night-b", "night-b")):
        score(client, s, ScoreConfig(dataset, MODEL, run_id), verbose=False)
        monitor_run(s, run_id)
    return s


@pytest.fixture(scope="module")
def page(store):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "batchml", "dashboard", "--root", store.config.root,
                               "--port", str(port), "--refresh", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert wait_for_port(port), "the dashboard server did not start"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.goto(f"http://127.0.0.1:{port}/")
        pg.locator(".bm-accuracy").first.wait_for(timeout=60_000)
        yield pg
        browser.close()
    server.terminate()
    server.wait(10)


def runs_table(store):
    return read_table(store, "runs").set_index("run_id")


def open_tab(page, name: str) -> None:
    page.locator(".bk-tab").filter(has_text=re.compile(f"^{name}$")).first.click()


def text(page, css: str) -> str:
    """The element's text once it has some (a pane can be attached a moment before it is filled)."""
    locator = page.locator(css).first
    expect(locator).to_have_text(re.compile(r"\S"), use_inner_text=True, timeout=30_000)
    return locator.inner_text().strip()


def test_overview_shows_the_latest_run_and_its_accuracy(page, store):
    latest = runs_table(store).loc["night-b"]
    assert text(page, ".bm-run-id") == "night-b"
    assert text(page, ".bm-accuracy") == f"{latest.accuracy:.2%}"
    assert text(page, ".bm-rows") == f"{latest.rows:,}"
    page.screenshot(path=SHOTS / "overview.png")


def test_overview_lists_recent_nights_with_their_status(page, store):
    recent = text(page, ".bm-recent")
    assert "night-a" in recent and "night-b" in recent and ("OK" in recent or "WARNING" in recent)


def test_accuracy_over_time_lists_every_run(page, store):
    open_tab(page, "Accuracy")
    table = text(page, ".bm-accuracy-table")
    assert "night-a" in table and "night-b" in table
    page.screenshot(path=SHOTS / "accuracy.png")


def test_confusion_view_follows_the_selected_run(page, store):
    runs = runs_table(store)
    open_tab(page, "Confusion")
    assert text(page, ".bm-range-accuracy") == f"{runs.loc['night-b', 'accuracy']:.2%}"
    page.screenshot(path=SHOTS / "confusion.png")
    page.locator("select", has=page.locator("option", has_text="night-a")).select_option("night-a")
    expected = f"{runs.loc['night-a', 'accuracy']:.2%}"
    page.wait_for_function(
        "([css, want]) => { const q = (root) => root.querySelector(css) || [...root.querySelectorAll('*')]"
        ".map(e => e.shadowRoot && q(e.shadowRoot)).find(Boolean); const el = q(document);"
        " return el && el.textContent.trim() === want; }", arg=[".bm-range-accuracy", expected], timeout=30_000)
    assert expected != f"{runs.loc['night-b', 'accuracy']:.2%}"
    assert "recall" in text(page, ".bm-per-class")
    page.locator("select", has=page.locator("option", has_text="night-a")).select_option("night-b")


def test_class_mix_shows_the_shift_statistics(page, store):
    open_tab(page, "Class mix")
    assert text(page, ".bm-js") == f"{runs_table(store).loc['night-b', 'js_distance']:.4f}"
    page.screenshot(path=SHOTS / "class-mix.png")


def test_failure_gallery_shows_each_snapshot_image(page, store):
    import pandas as pd

    open_tab(page, "Failures")
    snap = pd.read_parquet(store.path("monitoring/failures/night-b.parquet"))
    page.locator(".bm-misclassified img").first.wait_for(timeout=30_000)
    assert page.locator(".bm-misclassified img").count() == (snap.kind == "misclassified").sum() > 0
    assert page.locator(".bm-uncertain img").count() == (snap.kind == "uncertain").sum() == 6
    page.screenshot(path=SHOTS / "failures.png")


def test_models_view_lists_versions_and_aliases(page):
    open_tab(page, "Models")
    table = text(page, ".bm-models")
    assert "shapes/v1" in table and "production" in table
    page.screenshot(path=SHOTS / "models.png")
    shown = page.locator(".bm-models").first.element_handle()
    page.wait_for_timeout(5_000)  # two periodic refreshes with nothing new: the table stays as it is
    assert shown.evaluate("e => e.isConnected")


def test_refresh_stamp_changes_only_with_news(store, tmp_path):
    from batchml.registry import ModelVersion, promote
    from batchml.serve.dashboard import MonitoringData

    s = copy_store(store, tmp_path / "store")
    data = MonitoringData(s)
    data.refresh()
    before = data.stamp
    data.refresh()
    assert data.stamp == before
    promote(s, ModelVersion("shapes", "v1"), "canary")
    data.refresh()
    assert data.stamp != before
    before = data.stamp
    monitor_run(s, "night-a")  # re-monitoring rewrites the run's rows
    data.refresh()
    assert data.stamp != before
    before = data.stamp
    s.write_parquet("monitoring/failures/night-a.parquet", s.read_parquet("monitoring/failures/night-b.parquet"))
    data.refresh()
    assert data.stamp != before  # a snapshot lands after its run's row


def test_runs_view_shows_partitions_and_timings(page, store):
    open_tab(page, "Runs")
    assert text(page, ".bm-runs-rows") == f"{store.read_json('runs/night-b/manifest.json')['rows']:,}"
    assert "part-00000.parquet" in text(page, ".bm-partitions")
    page.screenshot(path=SHOTS / "runs.png")


def test_new_runs_appear_without_a_restart(page, store, client):
    score(client, store, ScoreConfig("shapes-test", MODEL, "night-c"), verbose=False)
    monitor_run(store, "night-c")
    open_tab(page, "Overview")
    page.wait_for_function(
        "() => { const q = (root) => root.querySelector('.bm-run-id') || [...root.querySelectorAll('*')]"
        ".map(e => e.shadowRoot && q(e.shadowRoot)).find(Boolean); const el = q(document);"
        " return el && el.textContent.trim() === 'night-c'; }", timeout=30_000)


def test_basic_auth_asks_for_the_password(store):
    import requests

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "batchml", "dashboard", "--root", store.config.root,
                               "--port", str(port), "--basic-auth", "s3cret", "--cookie-secret", "x" * 32],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        assert "/login" in requests.get(url, allow_redirects=False, timeout=30).headers.get("Location", "")
        with requests.Session() as session:
            session.get(f"{url}/login", timeout=30)
            refused = session.post(f"{url}/login", data={"username": "analyst", "password": "wrong"}, timeout=30)
            assert "batchml monitoring" not in refused.text
            ok = session.post(f"{url}/login", data={"username": "analyst", "password": "s3cret"}, timeout=30)
            assert ok.status_code == 200 and "batchml monitoring" in ok.text
    finally:
        server.terminate()
        server.wait(10)


def _dashboard(store, *args: str, env: dict | None = None, port: int | None = None) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    server = subprocess.Popen([sys.executable, "-m", "batchml", "dashboard", "--root", store.config.root,
                               "--port", str(port), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    return server, port


def test_basic_auth_without_a_cookie_secret_refuses_to_start(store):
    env = {k: v for k, v in os.environ.items() if k != "BATCHML_COOKIE_SECRET"}
    server, _ = _dashboard(store, "--basic-auth", "s3cret", env=env)
    _, err = server.communicate(timeout=120)
    assert server.returncode == 2 and "--basic-auth needs --cookie-secret" in err


def test_wrong_passwords_are_throttled(store):
    import time

    import requests

    server, port = _dashboard(store, "--basic-auth", "s3cret", "--cookie-secret", "x" * 32)
    try:
        assert wait_for_port(port)
        url = f"http://127.0.0.1:{port}/login"
        with requests.Session() as session:
            session.get(url, timeout=30)
            started = time.monotonic()
            for _ in range(5):
                session.post(url, data={"username": "a", "password": "guess"}, timeout=60)
            assert time.monotonic() - started >= 3  # 0.25 + 0.5 + 1 + 2 s of waits
            ok = session.post(url, data={"username": "a", "password": "s3cret"}, timeout=60)
            assert ok.status_code == 200 and "batchml monitoring" in ok.text
    finally:
        server.terminate()
        server.wait(10)


def test_a_browser_reaching_the_dashboard_by_another_host_name_gets_the_page(store, page):
    port = free_port()
    origin = f"dash.example:{port}"  # as a DNS name or a reverse proxy would present it
    server, _ = _dashboard(store, "--allow-websocket-origin", origin, port=port)
    try:
        assert wait_for_port(port), "the dashboard server did not start"
        # a second browser from the module's Playwright (one sync Playwright per thread), in which
        # the host name resolves to 127.0.0.1
        browser = page.context.browser.browser_type.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP dash.example 127.0.0.1"])
        pg = browser.new_page()
        pg.goto(f"http://{origin}/")
        pg.locator(".bm-accuracy").first.wait_for(timeout=60_000)  # drawn over the websocket
        browser.close()
    finally:
        server.terminate()
        server.wait(10)
