"""Alerts that reach people: the night's report POSTed to webhooks (Slack, Alertmanager, or
any receiver of JSON) and written as Prometheus textfile-collector metrics.

Nothing here changes a job's exit code: a receiver that is down costs a warning on stderr,
after ``NotifyConfig.attempts`` tries with doubling waits. Secrets stay out of the payload:
a bearer token (from the environment, read by the CLI) travels in the Authorization header
only, and a webhook's URL (Slack's holds its key) is never repeated in a message.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from batchml.monitoring.rules import ORDER

FORMATS = ("slack", "alertmanager", "json")
# the figures of the night that travel: what someone woken at night reads first
FIGURES = ("rows", "errors", "error_ratio", "labelled", "accuracy", "accuracy_low", "accuracy_high",
           "reference_accuracy", "label_free_accuracy", "label_free_method", "js_distance", "dataset",
           "committed_at")
# the alert kinds monitoring raises (``batchml.monitoring.run_monitor``): the metrics file writes each,
# 0 when quiet, so that a Prometheus rule sees an alert end as well as start
ALERT_KINDS = ORDER  # every kind the rules raise: a quiet night writes 0 for each


@dataclass(frozen=True)
class Night:
    """What a night tells the people watching it."""

    status: str  # ok | warning (warning alerts only) | error (an error alert) | failed (the job itself failed)
    run_id: str | None
    model_version: str | None = None
    alerts: list[dict] = field(default_factory=list)  # kind, severity, message
    figures: dict = field(default_factory=dict)  # FIGURES that the night has
    duration_seconds: float | None = None
    dashboard_url: str | None = None
    error: str = ""  # failed: why

    @classmethod
    def of_report(cls, report, duration_seconds: float | None = None, dashboard_url: str | None = None) -> Night:
        """From a ``batchml.monitoring.RunReport``: its ``row`` (a ``MonitoringRow``) and ``alerts``."""
        row, alerts = report.row.to_dict(), [a.to_dict() for a in report.alerts]
        status = ("error" if any(a["severity"] == "error" for a in alerts)
                  else "warning" if alerts else "ok")
        figures = {k: _plain(row[k]) for k in FIGURES if k in row and _plain(row[k]) is not None}
        return cls(status, row.get("run_id"), row.get("model_version"),
                   [{k: a.get(k) for k in ("kind", "severity", "message")} for a in alerts],
                   figures, duration_seconds, dashboard_url)

    @classmethod
    def failed(cls, run_id: str | None, error: str, duration_seconds: float | None = None,
               dashboard_url: str | None = None) -> Night:
        return cls("failed", run_id, duration_seconds=duration_seconds, dashboard_url=dashboard_url, error=error)

    @property
    def summary(self) -> str:
        """One line: "batchml night nightly-2026-11-29: ERROR, 2 alerts (accuracy_drop, new_shift)"."""
        what = f"run {self.run_id}" if self.run_id else "the nightly job"
        if self.status == "failed":
            return f"batchml: {what} FAILED: {self.error}"
        kinds = f" ({', '.join(a['kind'] for a in self.alerts)})" if self.alerts else ""
        return f"batchml: {what} {self.status.upper()}, {len(self.alerts)} alert(s){kinds}"


def _plain(value):
    """A table's value as JSON: numpy scalars to numbers, NaN to None."""
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


# -- payloads --------------------------------------------------------------------------------------


def payload(night: Night, fmt: str) -> dict | list:
    """The body POSTed for ``fmt`` (one of ``FORMATS``)."""
    return {"slack": slack_payload, "alertmanager": alertmanager_payload, "json": json_payload}[fmt](night)


def json_payload(night: Night) -> dict:
    return {"source": "batchml", "status": night.status, "summary": night.summary, "run_id": night.run_id,
            "model_version": night.model_version, "alerts": night.alerts, "figures": night.figures,
            "duration_seconds": night.duration_seconds, "dashboard_url": night.dashboard_url,
            "error": night.error or None}


def slack_payload(night: Night) -> dict:
    """An incoming-webhook message: ``text`` (the notification's line) and Block Kit ``blocks``."""
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": night.summary[:150]}}]
    if night.figures:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{k.replace('_', ' ')}*\n{_shown(v)}"} for k, v in night.figures.items()
        ][:10]})  # Slack takes at most 10 fields in a section
    for a in night.alerts[:20]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"*{a['severity'].upper()}* `{a['kind']}`: {a['message']}"}})
    if night.error:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*error*: {night.error[:2900]}"}})
    if night.dashboard_url:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open the dashboard"},
             "url": night.dashboard_url}]})
    return {"text": night.summary, "blocks": blocks}


def _shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def alertmanager_payload(night: Night) -> list[dict]:
    """Alertmanager's ``POST /api/v2/alerts`` body: one alert per alert of the night (a failed job is
    one too). A quiet night sends none: Alertmanager resolves what is not sent again."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    common = {"job": "batchml", "run_id": night.run_id or "", "model_version": night.model_version or ""}
    alerts = night.alerts if night.status != "failed" else [
        {"kind": "job_failed", "severity": "error", "message": night.error}]
    out = []
    for a in alerts:
        alert = {"labels": {"alertname": f"batchml_{a['kind']}", "severity": a["severity"], "kind": a["kind"],
                            **common},
                 "annotations": {"summary": night.summary, "description": a["message"],
                                 **{k: _shown(v) for k, v in night.figures.items()}},
                 "startsAt": now}
        if night.dashboard_url:
            alert["generatorURL"] = night.dashboard_url
        out.append(alert)
    return out


# -- sending ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotifyConfig:
    urls: tuple[str, ...] = ()
    format: str = "json"  # one of FORMATS
    bearer_token: str | None = None  # sent as "Authorization: Bearer ..." only, never in the body
    attempts: int = 4  # tries per URL
    backoff_seconds: float = 1.0  # the wait after the first failed try; doubled after each
    timeout_seconds: float = 10.0  # per try
    secrets: tuple[str, ...] = ()  # values replaced by *** wherever they appear in the body


def notify(night: Night, cfg: NotifyConfig) -> list[str]:
    """POST the night to every URL; the problems (one line per URL that never took it), for the caller
    to print. Never raises: a notification must not fail the night it reports."""
    body = _scrubbed(payload(night, cfg.format), (*cfg.secrets, *([cfg.bearer_token] if cfg.bearer_token else [])))
    if cfg.format == "alertmanager" and not body:
        return []
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "batchml"}
    if cfg.bearer_token:
        headers["Authorization"] = f"Bearer {cfg.bearer_token}"
    return [problem for url in cfg.urls if (problem := _post(url, data, headers, cfg))]


def _scrubbed(body, secrets: tuple[str, ...]):
    """``body`` with every secret value in its strings replaced (an error message may quote one)."""
    if not secrets:
        return body
    text = json.dumps(body)
    for secret in secrets:
        text = text.replace(json.dumps(secret)[1:-1], "***")
    return json.loads(text)


def _post(url: str, data: bytes, headers: dict, cfg: NotifyConfig) -> str:
    """"" once the receiver took it, else why not (4xx but 408/429 are not retried)."""
    why = ""
    for attempt in range(cfg.attempts):
        if attempt:
            time.sleep(cfg.backoff_seconds * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers, method="POST"),
                                        timeout=cfg.timeout_seconds) as response:
                response.read()
            return ""
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code} {exc.reason}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break
        except (OSError, ValueError) as exc:  # refused, timed out, unknown host, bad URL
            why = f"{type(exc).__name__}: {exc}"
    return f"could not notify {redacted(url)} ({why}; {attempt + 1} tries)"


def redacted(url: str) -> str:
    """The URL without its path and query: a Slack webhook's path is its key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/..."


# -- metrics ---------------------------------------------------------------------------------------


def metrics_text(night: Night) -> str:
    """Prometheus text exposition of the night, for node_exporter's textfile collector."""
    labels = {"run_id": night.run_id or "", "model_version": night.model_version or ""}
    f = night.figures
    lines: list[str] = []

    def metric(name: str, help: str, value, extra: dict | None = None, kind: str = "gauge") -> None:
        if value is None:
            return
        if not any(line.startswith(f"# HELP batchml_{name} ") for line in lines):
            lines.extend([f"# HELP batchml_{name} {help}", f"# TYPE batchml_{name} {kind}"])
        lines.append(f"batchml_{name}{_labels({**labels, **(extra or {})})} {float(value):g}")

    status = ("ok", "warning", "error", "failed").index(night.status)
    metric("night_status", "0 ok, 1 warning alerts, 2 an error alert, 3 the job failed", status)
    metric("last_run_timestamp_seconds", "when the night was reported (Unix time)", time.time())
    metric("rows", "predictions of the night's run", f.get("rows"))
    metric("errors", "undecodable images of the night's run", f.get("errors"))
    metric("labelled_rows", "labelled predictions of the night's run", f.get("labelled"))
    metric("accuracy", "accuracy on the night's labelled rows", f.get("accuracy"))
    metric("label_free_accuracy", "accuracy estimated without labels", f.get("label_free_accuracy"),
           {"method": str(f.get("label_free_method", ""))})
    raised: dict[tuple[str, str], int] = {}
    for a in night.alerts:
        raised[(a["kind"], a["severity"])] = raised.get((a["kind"], a["severity"]), 0) + 1
    kinds = {k for k, _ in raised} | set(ALERT_KINDS)
    for kind in sorted(kinds):
        found = [(sev, n) for (k, sev), n in raised.items() if k == kind] or [("none", 0)]
        for severity, n in found:
            metric("alerts", "alerts of the night by kind", n, {"kind": kind, "severity": severity})
    metric("duration_seconds", "the job's wall time", night.duration_seconds)
    return "\n".join(lines) + "\n"


def _labels(labels: dict) -> str:
    def escaped(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{escaped(v)}"' for k, v in labels.items()) + "}"


def write_metrics(path: str, night: Night) -> None:
    """Write the metrics file whole (a temporary file renamed over it): the collector never reads half."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".batchml-", suffix=".prom.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(metrics_text(night))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
