"""The served dashboard, driven in a real headless Chromium (Debian's, through Playwright); its login and
start-up checks, without a browser."""

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
                               "--port", str(port), "--refresh", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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


@pytest.mark.slow
def test_overview_shows_the_latest_run_and_its_accuracy(page, store):
    latest = runs_table(store).loc["night-b"]
    assert text(page, ".bm-run-id") == "night-b"
    assert text(page, ".bm-accuracy") == f"{latest.accuracy:.2%}"
    assert text(page, ".bm-rows") == f"{latest.rows:,}"
    page.screenshot(path=SHOTS / "overview.png")


@pytest.mark.slow
def test_overview_lists_recent_nights_with_their_status(page, store):
    recent = text(page, ".bm-recent")
    assert "night-a" in recent and "night-b" in recent and ("OK" in recent or "WARNING" in recent)


@pytest.mark.slow
def test_accuracy_over_time_lists_every_run(page, store):
    open_tab(page, "Accuracy")
    table = text(page, ".bm-accuracy-table")
    assert "night-a" in table and "night-b" in table
    page.screenshot(path=SHOTS / "accuracy.png")


@pytest.mark.slow
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


@pytest.mark.slow
def test_class_mix_shows_the_shift_statistics(page, store):
    open_tab(page, "Class mix")
    assert text(page, ".bm-js") == f"{runs_table(store).loc['night-b', 'js_distance']:.4f}"
    page.screenshot(path=SHOTS / "class-mix.png")


@pytest.mark.slow
def test_failure_gallery_shows_each_snapshot_image(page, store):
    import pandas as pd

    open_tab(page, "Failures")
    snap = pd.read_parquet(store.path("monitoring/failures/night-b.parquet"))
    page.locator(".bm-misclassified img").first.wait_for(timeout=30_000)
    assert page.locator(".bm-misclassified img").count() == (snap.kind == "misclassified").sum() > 0
    assert page.locator(".bm-uncertain img").count() == (snap.kind == "uncertain").sum() == 6
    page.screenshot(path=SHOTS / "failures.png")


@pytest.mark.slow
def test_models_view_lists_versions_and_aliases(page):
    open_tab(page, "Models")
    table = text(page, ".bm-models")
    assert "shapes/v1" in table and "production" in table
    page.screenshot(path=SHOTS / "models.png")
    shown = page.locator(".bm-models").first.element_handle()
    page.wait_for_timeout(2_500)  # two periodic refreshes (--refresh 1) with nothing new: the table stays
    assert shown.evaluate("e => e.isConnected")


@pytest.mark.slow
def test_refresh_stamp_changes_only_with_news(store, tmp_path):
    from batchml.registry import ModelVersion, promote
    from batchml.serve.dashboard_data import MonitoringData

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


@pytest.mark.slow
def test_runs_view_shows_partitions_and_timings(page, store):
    open_tab(page, "Runs")
    assert text(page, ".bm-runs-rows") == f"{store.read_json('runs/night-b/manifest.json')['rows']:,}"
    assert "part-00000.parquet" in text(page, ".bm-partitions")
    page.screenshot(path=SHOTS / "runs.png")


@pytest.mark.slow
def test_new_runs_appear_without_a_restart(page, store, client):
    score(client, store, ScoreConfig("shapes-test", MODEL, "night-c"), verbose=False)
    monitor_run(store, "night-c")
    open_tab(page, "Overview")
    page.wait_for_function(
        "() => { const q = (root) => root.querySelector('.bm-run-id') || [...root.querySelectorAll('*')]"
        ".map(e => e.shadowRoot && q(e.shadowRoot)).find(Boolean); const el = q(document);"
        " return el && el.textContent.trim() === 'night-c'; }", timeout=30_000)


@pytest.mark.slow
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


@pytest.mark.slow
def test_basic_auth_without_a_cookie_secret_refuses_to_start(store):
    env = {k: v for k, v in os.environ.items() if k != "BATCHML_COOKIE_SECRET"}
    server, _ = _dashboard(store, "--basic-auth", "s3cret", env=env)
    _, err = server.communicate(timeout=120)
    assert server.returncode == 2 and "--basic-auth needs --cookie-secret" in err


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- start-up checks and the login, without a browser or a cluster ---------------------------------


def dashboard_main(monkeypatch, tmp_path, *args: str) -> int:
    """``batchml dashboard`` up to the point where it would serve (Panel's server replaced)."""
    import panel

    from batchml.cli import main

    monkeypatch.setattr(panel, "serve", lambda *a, **k: None)
    return main(["dashboard", "--root", str(tmp_path / "store"), *args])


@pytest.mark.parametrize("value", ["./users.json", "users.json", "~/no-such-folder-here/users.json", "/etc/nope"])
def test_a_basic_auth_value_naming_a_missing_file_refuses_to_start(monkeypatch, tmp_path, capsys, value):
    monkeypatch.chdir(tmp_path)
    assert dashboard_main(monkeypatch, tmp_path, "--basic-auth", value, "--cookie-secret", "x" * 32) == 2
    err = capsys.readouterr().err
    assert f"--basic-auth {value!r} looks like a users file, but there is no such file" in err
    assert "BATCHML_DASHBOARD_PASSWORD" in err


@pytest.mark.parametrize(("text", "problem"), [("{oops", "not valid JSON"), ('["a"]', "expected a JSON object"),
                                               ('{"a": 1}', "expected a JSON object")])
def test_a_malformed_users_file_is_named_not_a_traceback(monkeypatch, tmp_path, capsys, text, problem):
    users = tmp_path / "users.json"
    users.write_text(text)
    assert dashboard_main(monkeypatch, tmp_path, "--basic-auth", str(users), "--cookie-secret", "x" * 32) == 2
    err = capsys.readouterr().err
    assert f"--basic-auth {users}: {problem}" in err and "Traceback" not in err


def test_a_port_out_of_range_is_a_clear_error(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        dashboard_main(monkeypatch, tmp_path, "--port", "70000")
    assert exit_.value.code == 2 and "'70000' is not a port: use 1 to 65535" in capsys.readouterr().err


def test_a_root_that_is_a_file_is_a_clear_error(monkeypatch, tmp_path, capsys):
    (tmp_path / "store").write_text("not a store")
    assert dashboard_main(monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"--root {tmp_path / 'store'} is a file" in err and "Traceback" not in err


def test_listening_beyond_loopback_without_a_login_warns(monkeypatch, tmp_path, capsys):
    assert dashboard_main(monkeypatch, tmp_path, "--address", "0.0.0.0") == 0
    assert "warning: listening on 0.0.0.0 without --basic-auth" in capsys.readouterr().err
    for quiet in (["--address", "127.0.0.1"], ["--address", "::1"],
                  ["--address", "0.0.0.0", "--basic-auth", "pw", "--cookie-secret", "x" * 32]):
        assert dashboard_main(monkeypatch, tmp_path, *quiet) == 0
        assert "warning" not in capsys.readouterr().err


def test_passwords_are_compared_in_constant_time(monkeypatch):
    import hmac

    from batchml.serve.login import Passwords

    compared = []
    original = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or original(a, b))
    assert Passwords("s3cret").check("anyone", "s3cret") and not Passwords("s3cret").check("anyone", "s3cre")
    users = Passwords({"ann": "pw1", "bob": "pw2"})
    assert users.check("ann", "pw1") and not users.check("ann", "pw2") and not users.check("eve", "")
    assert len(compared) == 5  # every check, an unknown user's too


def test_each_try_after_a_failure_waits_longer_and_a_wait_beyond_the_bound_is_refused():
    from batchml.serve import login

    now = [0.0]
    throttle = login.LoginThrottle(clock=lambda: now[0])
    waits = [throttle.reserve("a") for _ in range(6)]  # six tries at the same instant: they take turns
    assert waits == [0, 0.25, 0.75, 1.75, 3.75, 7.75]
    with pytest.raises(login.TooManyTriesError) as busy:
        throttle.reserve("a")  # its turn would come 15.75 s from now
    assert busy.value.retry_after == pytest.approx(15.75 - login.LOGIN_WAIT_MAX_SECONDS)
    assert throttle.reserve("b") == 0  # another address is not held up
    throttle.succeeded("a")
    assert throttle.reserve("a") == 0  # the right password clears the address
    now[0] += login.LOGIN_FORGET_SECONDS + 1
    throttle.reserve("b")
    assert throttle.reserve("b") == 0.25  # forgotten after a quiet while, then counted afresh


def test_the_throttles_table_keeps_only_the_most_recent_addresses():
    from batchml.serve.login import LoginThrottle

    throttle = LoginThrottle(capacity=3, clock=lambda: 0.0)
    for address in ("a", "b", "c", "a", "d"):
        throttle.reserve(address)
    assert len(throttle) == 3
    assert throttle.reserve("b") == 0  # the least recently seen was forgotten
    assert throttle.reserve("a") > 0  # ... not one seen since


def test_the_forwarded_address_counts_only_from_a_trusted_proxy():
    from batchml.serve.login import client_address

    trusted = frozenset({"10.0.0.9"})
    assert client_address("203.0.113.5", "198.51.100.1", trusted) == "203.0.113.5"  # anyone can write the header
    assert client_address("10.0.0.9", "198.51.100.1", trusted) == "198.51.100.1"
    assert client_address("10.0.0.9", "6.6.6.6, 198.51.100.1, 10.0.0.9", trusted) == "198.51.100.1"
    assert client_address("10.0.0.9", None, trusted) == "10.0.0.9"


@pytest.fixture
def login_server():
    """Serves only the throttled login form on loopback, in a thread; returns a function that starts one
    for the given users and trusted proxies and gives its URL."""
    import asyncio
    import threading

    import tornado.web

    from batchml.serve.login import ThrottledAuthProvider

    loops = []

    def start(users, trusted=()) -> str:
        # the loop lives in its own thread from the start: a browser test may leave a loop running here
        port, ready = free_port(), threading.Event()
        handler = ThrottledAuthProvider(users, trusted).login_handler

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            tornado.web.Application([(r"/login", handler)], cookie_secret="x" * 32).listen(port, "127.0.0.1")
            loops.append(loop)
            ready.set()
            loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        assert ready.wait(30), "the login server did not start"
        return f"http://127.0.0.1:{port}/login"

    yield start
    for loop in loops:
        loop.call_soon_threadsafe(loop.stop)


def test_a_login_that_would_wait_too_long_is_answered_429_and_only_a_trusted_proxy_forwards(login_server,
                                                                                              monkeypatch):
    import requests

    from batchml.serve import login

    monkeypatch.setattr(login, "LOGIN_DELAY_SECONDS", 0.2)
    monkeypatch.setattr(login, "LOGIN_WAIT_MAX_SECONDS", 0.3)

    def post(url, client, password):
        return requests.post(url, data={"username": "u", "password": password}, allow_redirects=False, timeout=30,
                             headers={"X-Forwarded-For": client})

    direct = login_server("s3cret")  # from 127.0.0.1, not a trusted proxy: every client is 127.0.0.1
    assert [post(direct, "198.51.100.1", "guess").status_code for _ in range(2)] == [302, 302]
    refused = post(direct, "198.51.100.2", "s3cret")  # its turn is 0.4 s away, beyond the 0.3 s bound
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1

    proxied = login_server("s3cret", trusted=["127.0.0.1"])  # behind a trusted proxy: clients apart
    assert [post(proxied, "198.51.100.1", "guess").status_code for _ in range(2)] == [302, 302]
    welcome = post(proxied, "198.51.100.2", "s3cret")
    assert welcome.status_code == 302 and "error" not in welcome.headers["Location"]
    assert post(proxied, "198.51.100.1", "guess").status_code == 429


def test_the_app_builds_its_tabs_on_an_empty_store(tmp_path):
    from batchml.serve.dashboard import create_app
    from batchml.store import Store, StoreConfig

    app = create_app(Store(StoreConfig(str(tmp_path / "store"))), refresh_seconds=0)
    tabs = app.main[0]
    assert tabs._names == ["Overview", "Accuracy", "Confusion", "Confusion (range)", "Class mix", "Failures",
                           "Models", "Runs"]


def test_a_range_of_models_with_different_classes_asks_for_one_model_not_a_failed_view():
    import numpy as np
    import pandas as pd

    from batchml.serve.dashboard import one_class_list

    runs = pd.DataFrame({"model_version": ["cifar10/v1", "cifar10/v2", "pets/v1"],
                         "classes": [np.array(CLASSES, dtype=object)] * 2 + [np.array(["cat", "dog"], dtype=object)]})
    note = one_class_list(runs, "class mix")
    assert note is not None and "cifar10/v1, cifar10/v2, pets/v1" in note.object and "Model version" in note.object
    assert one_class_list(runs.iloc[:2], "class mix") is None  # versions of one model: one class list
