"""Alerts that reach people: webhooks on a local HTTP server (Slack and Alertmanager shapes),
the Prometheus metrics file, and the self-contained HTML report."""

from __future__ import annotations

import functools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from batchml import notify as notify_module
from batchml.cli import main
from batchml.monitoring import monitor_run
from batchml.notify import Night, NotifyConfig, metrics_text, notify, write_metrics
from batchml.report import render
from tests.ops_fixtures import fake_run


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers ``codes`` in turn (then 200) and keeps each request."""

    def __init__(self, codes=()):
        self.codes, self.requests = list(codes), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def report(store):
    fake_run(store)
    return monitor_run(store, "night-1")


FAST = {"backoff_seconds": 0.01, "timeout_seconds": 5}


def test_slack_gets_an_incoming_webhook_message(receiver, report):
    night = Night.of_report(report, 12.5, "https://dash.example/batchml")
    assert notify(night, NotifyConfig((receiver.url + "/services/T0/B0/secret",), "slack", **FAST)) == []
    (req,) = receiver.requests
    body = req["body"]
    assert set(body) == {"text", "blocks"} and body["text"].startswith("batchml: run night-1 ERROR, 2 alert(s)")
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds[0] == "header" and kinds[-1] == "actions" and "section" in kinds
    assert body["blocks"][0]["text"]["type"] == "plain_text"
    assert len(body["blocks"][1]["fields"]) <= 10 and all(f["type"] == "mrkdwn" for f in body["blocks"][1]["fields"])
    assert body["blocks"][-1]["elements"][0]["url"] == "https://dash.example/batchml"
    assert any("accuracy_drop" in b.get("text", {}).get("text", "") for b in body["blocks"])


def test_alertmanager_gets_one_alert_per_alert_of_the_night(receiver, report):
    night = Night.of_report(report, 3.0, "https://dash.example/")
    assert notify(night, NotifyConfig((receiver.url + "/api/v2/alerts",), "alertmanager", **FAST)) == []
    (req,) = receiver.requests
    alerts = req["body"]
    assert req["path"] == "/api/v2/alerts" and isinstance(alerts, list) and len(alerts) == 2
    for a in alerts:
        assert set(a) == {"labels", "annotations", "startsAt", "generatorURL"}
        assert a["labels"]["alertname"].startswith("batchml_") and a["labels"]["run_id"] == "night-1"
        assert a["labels"]["severity"] in ("error", "warning")
        assert all(isinstance(v, str) for v in (*a["labels"].values(), *a["annotations"].values()))
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", a["startsAt"])


def test_a_failed_night_reaches_alertmanager_as_job_failed(receiver):
    notify(Night.failed("night-9", "store unreachable"), NotifyConfig((receiver.url,), "alertmanager", **FAST))
    (alert,) = receiver.requests[0]["body"]
    assert alert["labels"]["alertname"] == "batchml_job_failed" and alert["annotations"]["description"] == \
        "store unreachable"


def test_a_receiver_that_fails_is_retried_with_backoff():
    r = Receiver(codes=[503, 502])
    try:
        assert notify(Night.failed("n", "x"), NotifyConfig((r.url,), "json", **FAST)) == []
        assert len(r.requests) == 3
    finally:
        r.close()


def test_a_receiver_that_stays_down_is_reported_without_its_secret_path():
    r = Receiver(codes=[500] * 10)
    try:
        (problem,) = notify(Night.failed("n", "x"), NotifyConfig((r.url + "/hooks/SECRET",), "json", attempts=3,
                                                                 backoff_seconds=0.01))
    finally:
        r.close()
    assert "HTTP 500" in problem and "3 tries" in problem and "SECRET" not in problem


def test_the_token_travels_in_the_header_never_in_the_payload(receiver, report):
    notify(Night.of_report(report), NotifyConfig((receiver.url,), "json", bearer_token="s3cr3t-token", **FAST))
    (req,) = receiver.requests
    assert req["headers"]["Authorization"] == "Bearer s3cr3t-token"
    assert "s3cr3t-token" not in json.dumps(req["body"])
    assert req["body"]["status"] == "error" and req["body"]["figures"]["rows"] == 80


def test_monitor_notifies_and_keeps_its_exit_code_when_a_receiver_is_down(store, receiver, capsys, monkeypatch):
    fake_run(store)
    monkeypatch.setenv("BATCHML_NOTIFY_TOKEN", "tok")
    # the retries' waits (1 + 2 + 4 s) are tested above: here only what the command does after them
    monkeypatch.setattr(notify_module, "NotifyConfig", functools.partial(NotifyConfig, backoff_seconds=0.01))
    dead = "http://127.0.0.1:9/hook"  # the discard port: nothing listens
    code = main(["monitor", "--run-id", "night-1", "--root", store.config.root, "--notify", receiver.url,
                 "--notify", dead, "--notify-format", "json", "--dashboard-url", "https://dash.example/"])
    assert code == 1  # the night's accuracy_drop, whatever the receivers did
    assert receiver.requests[0]["body"]["dashboard_url"] == "https://dash.example/"
    assert "could not notify http://127.0.0.1:9/..." in capsys.readouterr().err


def test_the_metrics_file_is_prometheus_text(report, tmp_path):
    path = tmp_path / "textfile" / "batchml.prom"
    write_metrics(str(path), Night.of_report(report, 42.0))
    text = path.read_text()
    sample = re.compile(r'^batchml_[a-z_]+\{([a-z_]+="[^"]*",?)*\} -?[0-9.e+-]+$')
    for line in text.splitlines():
        assert line.startswith(("# HELP batchml_", "# TYPE batchml_")) or sample.match(line), line
    assert 'batchml_rows{run_id="night-1",model_version="tiny/v1"} 80' in text
    assert 'batchml_alerts{run_id="night-1",model_version="tiny/v1",kind="accuracy_drop",severity="error"} 1' in text
    assert 'kind="new_shift",severity="none"} 0' in text
    from batchml.monitoring.rules import ORDER

    for kind in ORDER:  # every kind the rules raise, 0 when quiet: a Prometheus rule sees each end
        assert f'kind="{kind}",' in text, kind
    assert "batchml_duration_seconds" in text and "batchml_accuracy{" in text
    assert text.count("# TYPE batchml_alerts gauge") == 1


def test_metric_labels_are_escaped():
    text = metrics_text(Night.failed('run"1\\', "x"))
    assert 'run_id="run\\"1\\\\"' in text


def test_the_report_is_one_self_contained_page(report, store, tmp_path):
    out = tmp_path / "night.html"
    assert main(["report", "--run-id", "night-1", "--out", str(out), "--root", store.config.root]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "accuracy_drop" in page and page.count("<svg") >= 3
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # nothing fetched from elsewhere


@pytest.mark.parametrize("damage", ["torn", "deleted"])
def test_a_report_whose_alerts_cannot_be_read_says_unknown_not_none(report, store, tmp_path, capsys, damage):
    from batchml import layout

    rel = layout.monitoring_path("alerts", "night-1")
    store.write_bytes(rel, store.read_bytes(rel)[:100]) if damage == "torn" else store.delete(rel)
    out = tmp_path / "night.html"
    assert main(["report", "--run-id", "night-1", "--out", str(out), "--root", store.config.root]) == 1
    page = out.read_text()
    assert "No alerts." not in page and "ALERTS UNKNOWN" in page and "Alerts unknown" in page
    assert "alerts of run night-1 are unknown" in capsys.readouterr().err


def test_the_report_escapes_what_it_reads(store):
    fake_run(store, "night-1")
    report = monitor_run(store, "night-1")
    assert report.alerts
    page = render(store, "night-1", dashboard_url="https://x/?a=<script>")
    assert "<script>" not in page


def test_a_report_of_a_run_not_monitored_says_how(store, capsys):
    fake_run(store)
    assert main(["report", "--run-id", "night-1", "--out", "x.html", "--root", store.config.root]) == 2
    assert "batchml monitor --run-id night-1` first" in capsys.readouterr().err


def test_the_nightly_job_reports_its_own_failure(receiver, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("nightly", Path(__file__).resolve().parents[1] / "jobs/nightly.py")
    nightly = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nightly)
    metrics = tmp_path / "batchml.prom"
    code = nightly.main(["--dataset", "night-{date}", "--date", "2026-11-29", "--root", str(tmp_path / "s"),
                         "--storage-options", "{not json", "--notify", receiver.url, "--metrics-file", str(metrics)])
    assert code == 2
    body = receiver.requests[0]["body"]
    assert body["status"] == "failed" and body["run_id"] == "nightly-night-2026-11-29"
    assert "--storage-options (or $BATCHML_STORAGE_OPTIONS) is not valid JSON" in body["error"]
    assert "batchml_night_status{" in metrics.read_text() and '"} 3' in metrics.read_text()


def test_a_secret_an_error_quotes_is_scrubbed_from_the_payload(receiver):
    night = Night.failed("n", "access denied with key AKIAXYZSECRET123 to s3://b")
    notify(night, NotifyConfig((receiver.url,), "slack", secrets=("AKIAXYZSECRET123",), **FAST))
    text = json.dumps(receiver.requests[0]["body"])
    assert "AKIAXYZSECRET123" not in text and "access denied with key ***" in text
