"""``batchml report --run-id ID --out night.html``: one self-contained HTML page of a monitored
night, to attach to a ticket or an e-mail: its figures, its alerts, the class mix against its
yardstick, the confidence histogram, accuracy over the model's recent nights, and the failure
cases. Charts are inline SVG and thumbnails inline PNG (``data:`` URIs): the page fetches
nothing, and every value read from the store is escaped.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from html import escape

import numpy as np
import pandas as pd

from batchml import layout
from batchml.errors import BatchmlError
from batchml.monitoring import read_table
from batchml.monitoring.tables import read_run_alerts
from batchml.store import Store

NIGHTS_SHOWN = 30  # recent nights of the same model in the accuracy chart
THUMBNAILS = 12  # failure cases shown per kind
_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}
.error{color:#b00020}.warning{color:#a05a00}.ok{color:#1b5e20}figure{display:inline-block;margin:.3em}
figcaption{font-size:11px}img{width:64px;height:64px;image-rendering:pixelated}"""


def render(store: Store, run_id: str, dashboard_url: str | None = None) -> str:
    """The page of ``run_id``, which must be monitored (``batchml monitor --run-id``)."""
    runs = read_table(store, "runs")
    match = runs[runs.run_id == run_id]
    if match.empty:
        raise BatchmlError(f"run {run_id!r} is not monitored in {store.url()}: run "
                           f"`batchml monitor --run-id {run_id}` first, then the report")
    row = match.iloc[0].to_dict()
    alerts = read_run_alerts(store, run_id)
    nights = runs[(runs.model_version == row["model_version"]) & (runs.committed_at <= row["committed_at"])]
    nights = nights.sort_values("committed_at").tail(NIGHTS_SHOWN)
    status = ("alerts unknown" if alerts is None else "error" if any(a["severity"] == "error" for a in alerts)
              else "warning" if alerts else "ok")
    link = f'<p><a href="{escape(dashboard_url)}">Open the dashboard</a></p>' if dashboard_url else ""
    body = [
        f"<h1>Night {escape(run_id)}: <span class='{status.split()[-1]}'>{status.upper()}</span></h1>",
        f"<p>model {escape(str(row['model_version']))}, dataset {escape(str(row['dataset']))}, committed "
        f"{escape(str(row['committed_at']))}</p>{link}",
        "<h2>Figures</h2>", _figures(row),
        "<h2>Alerts</h2>", _alerts(alerts) if alerts is not None else _alerts_unknown(store, run_id),
        "<h2>Class mix</h2>", _mix_chart(row),
        "<h2>Confidence</h2>", _histogram(row.get("confidence_hist")),
        "<h2>Accuracy over recent nights</h2>", _accuracy_chart(nights),
        "<h2>Failure cases</h2>", _failures(store, run_id),
        f"<p><small>batchml report, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, from {escape(store.url())}</small></p>",
    ]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>batchml {escape(run_id)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _figures(row: dict) -> str:
    def pct(key: str) -> str:
        v = _num(row.get(key))
        return "-" if v is None else f"{v:.2%}"

    shown = [("predictions", f"{int(row['rows']):,}"), ("undecodable images", f"{int(row['errors']):,}"),
             ("labelled rows", f"{int(row['labelled']):,}"),
             ("accuracy (95% CI)", f"{pct('accuracy')} ({pct('accuracy_low')} - {pct('accuracy_high')})"),
             ("reference accuracy", pct("reference_accuracy")),
             (f"label-free accuracy ({row.get('label_free_method') or '-'})", pct("label_free_accuracy")),
             ("class mix JS distance", "-" if _num(row.get("js_distance")) is None else f"{row['js_distance']:.4f}")]
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in shown) + "</table>"


def _alerts(alerts: list[dict]) -> str:
    if not alerts:
        return "<p class='ok'>No alerts.</p>"
    return "<table>" + "".join(
        f"<tr><td class='{escape(str(a['severity']))}'>{escape(str(a['severity']).upper())}</td>"
        f"<td>{escape(str(a['kind']))}</td><td>{escape(str(a['message']))}</td></tr>" for a in alerts) + "</table>"


def _alerts_unknown(store: Store, run_id: str) -> str:
    return (f"<p class='error'>Alerts unknown: {escape(store.url(layout.monitoring_path('alerts', run_id)))} is "
            f"missing or damaged. Run <code>batchml doctor --repair</code> (it monitors the run again), then "
            f"make this report again.</p>")


def alerts_unknown(store: Store, run_id: str) -> bool:
    """Whether the run's alerts cannot be read (the page then says so, and ``batchml report`` exits 1)."""
    return read_run_alerts(store, run_id) is None


def _listed(value) -> list:
    return [] if value is None or isinstance(value, float) else list(value)


def _mix_chart(row: dict) -> str:
    """Paired bars per class: tonight's predicted share, and the reference's (or the accepted run's)."""
    classes, share, ref = _listed(row.get("classes")), _listed(row.get("share")), _listed(row.get("reference_share"))
    if not classes or len(share) != len(classes):
        return "<p>-</p>"
    ref = ref if len(ref) == len(classes) else [0.0] * len(classes)
    width, bar, top = 640, 24, max(max(share), max(ref), 1e-9)
    rows = []
    for i, c in enumerate(classes):
        y = 20 + i * (2 * bar // 2 + 12)
        for j, (v, colour) in enumerate(((share[i], "#1f77b4"), (ref[i], "#bbbbbb"))):
            rows.append(f"<rect x='120' y='{y + j * bar // 2}' width='{(width - 200) * v / top:.1f}' "
                        f"height='{bar // 2 - 1}' fill='{colour}'/>")
        rows.append(f"<text x='0' y='{y + bar // 2}' font-size='12'>{escape(str(c))}</text>"
                    f"<text x='{125 + (width - 200) * max(share[i], ref[i]) / top:.1f}' y='{y + bar // 2}' "
                    f"font-size='11'>{share[i]:.1%} / {ref[i]:.1%}</text>")
    height = 30 + len(classes) * (bar + 12)
    legend = ("<text x='120' y='12' font-size='11' fill='#1f77b4'>tonight</text>"
              "<text x='180' y='12' font-size='11' fill='#888'>reference or accepted mix</text>")
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{legend}{''.join(rows)}</svg>"


def _histogram(hist) -> str:
    counts = _listed(hist)
    if not counts or sum(counts) == 0:
        return "<p>-</p>"
    width, height, top = 640, 160, max(counts)
    w = width / len(counts)
    bars = "".join(f"<rect x='{i * w:.1f}' y='{height - 20 - (height - 30) * c / top:.1f}' width='{w - 2:.1f}' "
                   f"height='{(height - 30) * c / top:.1f}' fill='#1f77b4'/>" for i, c in enumerate(counts))
    axis = (f"<text x='0' y='{height - 4}' font-size='11'>top probability 0</text>"
            f"<text x='{width - 20}' y='{height - 4}' font-size='11'>1</text>")
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{bars}{axis}</svg>"


def _accuracy_chart(nights: pd.DataFrame) -> str:
    """Labelled accuracy and the label-free estimate per night, as two lines."""
    series = {"accuracy": "#1f77b4", "label_free_accuracy": "#ff7f0e"}
    values = {k: [_num(v) for v in nights[k]] if k in nights else [] for k in series}
    if not any(v is not None for vs in values.values() for v in vs):
        return "<p>-</p>"
    width, height, n = 640, 180, len(nights)
    found = [v for vs in values.values() for v in vs if v is not None]
    low, high = min(found) - 0.02, max(found) + 0.02

    def point(i: int, v: float) -> str:
        x = 40 + (width - 60) * (i / max(n - 1, 1))
        return f"{x:.1f},{height - 20 - (height - 40) * (v - low) / (high - low):.1f}"

    lines = []
    for key, colour in series.items():
        pts = [point(i, v) for i, v in enumerate(values[key]) if v is not None]
        if pts:
            lines.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{' '.join(pts)}'/>")
            lines += [f"<circle cx='{p.split(',')[0]}' cy='{p.split(',')[1]}' r='2.5' fill='{colour}'/>" for p in pts]
    labels = (f"<text x='0' y='20' font-size='11'>{high:.0%}</text><text x='0' y='{height - 20}' font-size='11'>"
              f"{low:.0%}</text><text x='60' y='12' font-size='11' fill='#1f77b4'>accuracy</text>"
              "<text x='140' y='12' font-size='11' fill='#ff7f0e'>label-free estimate</text>")
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{labels}{''.join(lines)}</svg>"


def _failures(store: Store, run_id: str) -> str:
    rel = layout.monitoring_path("failures", run_id)
    if not store.exists(rel):
        return "<p>-</p>"
    try:
        cases = store.read_parquet(rel).to_pandas()
    except Exception:  # a damaged snapshot leaves the rest of the page whole
        return f"<p>the snapshot {escape(store.url(rel))} is damaged: <code>batchml doctor --repair</code></p>"
    out = []
    for kind in ("misclassified", "uncertain"):
        shown = cases[cases.kind == kind].head(THUMBNAILS)
        if shown.empty:
            continue
        figures = "".join(
            f"<figure><img alt='{escape(str(c.image_id))}' src='data:image/png;base64,"
            f"{base64.b64encode(c.thumbnail).decode()}'><figcaption>{escape(str(c.predicted_class))} "
            f"{c.confidence:.0%}<br>{escape(str(c.true_class or '?'))}</figcaption></figure>"
            for c in shown.itertuples())
        out.append(f"<h3>{kind}</h3>{figures}")
    return "".join(out) or "<p>none</p>"
