"""The dashboard's views: each tab's content rendered from ``dashboard_data`` (figures, tables,
Bokeh charts). Nothing here reads the store except through ``MonitoringData``, or the registry
through ``list_registered``."""

from __future__ import annotations

import base64
import html

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper, Span
from bokeh.palettes import RdBu11
from bokeh.plotting import figure

from batchml.monitoring.classes import row_normalised
from batchml.monitoring.row import summarise_rows
from batchml.records import is_absent
from batchml.registry import list_registered
from batchml.serve.dashboard_data import MonitoringData, accuracy_frame, label_free, recent_nights
from batchml.store import Store

# -- small rendering helpers ---------------------------------------------------------------------


def _value(label: str, value: str, css: str) -> str:
    """A labelled figure; the class lets people (and the browser tests) find it."""
    return (f'<div class="bm-card"><div class="bm-label">{html.escape(label)}</div>'
            f'<div class="bm-value {css}">{html.escape(value)}</div></div>')


def _pct(v) -> str:
    return "-" if is_absent(v) else f"{v:.2%}"


def _class_name(name) -> str:
    return "?" if is_absent(name) else html.escape(str(name))


def _html(content: str, **kwargs) -> pn.pane.HTML:
    return pn.pane.HTML(content, sizing_mode="stretch_width", **kwargs)


def _table(df: pd.DataFrame, css: str) -> pn.pane.HTML:
    return _html(df.to_html(index=False, classes=f"bm-table {css}", na_rep="-", float_format=lambda v: f"{v:.4f}"))


CSS = """
.bm-card {display: inline-block; margin: 0 24px 12px 0; vertical-align: top}
.bm-label {color: #666; font-size: 12px; text-transform: uppercase}
.bm-value {font-size: 26px; font-weight: 600}
.bm-table {border-collapse: collapse; font-size: 13px}
.bm-table td, .bm-table th {border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right}
.bm-alert-error {color: #b00020} .bm-alert-warning {color: #a05a00}
.bm-gallery figure {display: inline-block; margin: 4px; text-align: center; font-size: 11px; width: 96px}
.bm-gallery img {width: 64px; height: 64px; image-rendering: pixelated}
"""


def failed_view(exc: Exception) -> pn.pane.HTML:
    """What a tab shows when rendering it failed: one broken view must not take the dashboard down."""
    return _html(f"<p class='bm-view-error'>This view failed: {html.escape(repr(exc))}</p>")


# -- the views -------------------------------------------------------------------------------------


def overview(data: MonitoringData, runs: pd.DataFrame) -> pn.Column:
    if runs.empty:
        return pn.Column(_html(f"<p class='bm-empty'>No monitored runs in {html.escape(data.store.url())} "
                               "for this selection yet: run <code>batchml monitor --run-id ID</code>.</p>"))
    latest = runs.iloc[-1]
    alerts, status = data.alerts_of(latest.run_id), data.status(latest.run_id)
    figures = "".join([
        _value("latest run", latest.run_id, "bm-run-id"),
        _value("status", status, f"bm-status bm-status-{status.lower()}"),
        _value("rows scored", f"{int(latest.rows):,}", "bm-rows"),
        _value("errors", f"{int(latest.errors):,}", "bm-errors"),
        _value("accuracy", _pct(latest.accuracy), "bm-accuracy"),
        _value("label-free estimate", _pct(label_free(runs).iloc[-1]), "bm-expected"),
        _value("open alerts", str(len(alerts)), "bm-open-alerts"),
    ])
    return pn.Column(_html(figures), _html(f"<h3>What changed in {html.escape(latest.run_id)}, most likely cause "
                                           f"first</h3>{alert_list(alerts)}"),
                     _html("<h3>Recent nights</h3>"), _table(recent_nights(data, runs), "bm-recent"))


def accuracy_over_time(runs: pd.DataFrame) -> pn.Column:
    """The label-free estimate each night made, the realized accuracy as its labels arrive (with its
    interval and the labelled share), and the estimate's error: whether the estimator can be trusted."""
    acc = accuracy_frame(runs)
    labelled = acc[acc.realized_accuracy.notna()]
    fig = figure(height=320, sizing_mode="stretch_width", x_axis_type="datetime", y_range=(0, 1),
                 title="Accuracy: realized from labels (band: 95% interval) and the night's label-free estimate",
                 tools="pan,wheel_zoom,reset,save")
    errors = figure(height=200, sizing_mode="stretch_width", x_axis_type="datetime", x_range=fig.x_range,
                    title="Error of the night's estimate (estimate - realized), points", tools="pan,wheel_zoom,reset")
    if not runs.empty:
        src = ColumnDataSource(dict(t=pd.to_datetime(labelled.committed_at), acc=labelled.realized_accuracy,
                                    low=labelled.realized_low, high=labelled.realized_high, run=labelled.run_id,
                                    coverage=labelled.label_coverage, method=labelled.realized_method))
        fig.varea("t", "low", "high", source=src, alpha=0.2, color="#1f77b4")
        fig.line("t", "acc", source=src, line_width=2, legend_label="realized")
        fig.scatter("t", "acc", source=src, size=5)
        est = ColumnDataSource(dict(t=pd.to_datetime(acc.committed_at), est=acc.night_estimate, run=acc.run_id))
        fig.line("t", "est", source=est, line_dash="dashed", color="#ff7f0e", legend_label="estimate on the night")
        unlabelled = acc[acc.realized_accuracy.isna()]
        fig.scatter(pd.to_datetime(unlabelled.committed_at), unlabelled.night_estimate, size=6, marker="triangle",
                    color="#ff7f0e", legend_label="no labels yet (estimate)")
        fig.add_tools(HoverTool(tooltips=[("run", "@run"), ("accuracy", "@acc{0.000}"), ("labelled", "@coverage{0.0%}"),
                                          ("how", "@method")]))
        fig.legend.location = "bottom_left"
        judged = acc[acc.estimate_error.notna()]
        errors.vbar(pd.to_datetime(judged.committed_at), 0.8 * 86_400_000, 100 * judged.estimate_error,
                    color="#9467bd")
        errors.add_layout(Span(location=0, dimension="width", line_color="#666"))
    table = _table(acc.iloc[::-1], "bm-accuracy-table")
    return pn.Column(*(pn.pane.Bokeh(f, sizing_mode="stretch_width") for f in (fig, errors)), table)


def confusion_view(runs: pd.DataFrame, normalised: bool) -> pn.Column:
    if runs.empty:
        return pn.Column(_html("<p>No runs selected.</p>"))
    classes = list(runs.classes.iloc[-1])
    summary = summarise_rows(runs, classes)
    counts = np.asarray(summary["confusion"], float)
    shown = row_normalised(counts) if normalised else counts
    k = len(classes)
    true, pred = np.repeat(np.arange(k), k), np.tile(np.arange(k), k)
    values = shown[true, pred]
    src = ColumnDataSource(dict(true=[classes[i] for i in true], pred=[classes[j] for j in pred], value=values,
                                label=[f"{v:.2f}" if normalised else f"{int(v)}" for v in values],
                                alpha=values / max(values.max(), 1e-9)))
    fig = figure(height=420, width=480, x_range=classes, y_range=list(reversed(classes)), tools="save",
                 title=f"Confusion matrix ({'row-normalised' if normalised else 'counts'}), {len(runs)} run(s)",
                 x_axis_label="predicted", y_axis_label="true")
    fig.rect("pred", "true", 1, 1, source=src, fill_color="#1f4e79", fill_alpha="alpha", line_color="white")
    fig.text("pred", "true", text="label", source=src, text_align="center", text_baseline="middle",
             text_font_size="9pt")
    fig.xaxis.major_label_orientation = 0.8
    per_class = pd.DataFrame({"class": classes, **{m: summary[m] for m in
                                                   ("precision", "recall", "f1", "fpr", "fnr", "support")}})
    head = _value("accuracy", _pct(summary["accuracy"]), "bm-range-accuracy") + _value(
        "labelled", f"{summary['labelled']:,}", "bm-range-labelled")
    return pn.Column(_html(head), pn.Row(pn.pane.Bokeh(fig), _table(per_class, "bm-per-class")))


def class_mix(runs: pd.DataFrame) -> pn.Column:
    if runs.empty:
        return pn.Column(_html("<p>No runs selected.</p>"))
    classes = list(runs.classes.iloc[-1])
    fig = mix_heatmap(runs, classes)
    latest = runs.iloc[-1]
    def shares(value) -> list:  # a list column; None or NaN where the run was monitored before it
        return [None] * len(classes) if is_absent(value) else list(value)

    table = pd.DataFrame({
        "class": classes, "share": latest.share, "reference": latest.reference_share,
        "deviation": latest.share_deviation,
        "estimated true share (BBSE)": shares(latest.estimated_priors),
        "estimated true share (MLLS/EM)": shares(latest.mlls_priors),
    })
    history = "" if is_absent(latest.history_p_value) else (
        f", vs last {int(latest.history_nights)} nights p={latest.history_p_value:.3g}")
    stats = (f"<p class='bm-shift'>Latest run {html.escape(latest.run_id)}: JS distance "
             f"<b class='bm-js'>{latest.js_distance:.4f}</b>, chi-square {latest.chi2:.1f}, "
             f"p={latest.p_value:.3g}{history}</p>")
    return pn.Column(pn.pane.Bokeh(fig, sizing_mode="stretch_width"), _html(stats), _table(table, "bm-mix"))


def mix_heatmap(runs: pd.DataFrame, classes: list[str]):
    """Classes x nights, coloured by each class's share minus its reference share (red: more)."""
    nights = list(runs.run_id)
    deviation = np.stack(runs.share_deviation.to_numpy())  # (nights, K)
    span = max(float(np.abs(deviation).max()), 0.01)
    src = ColumnDataSource(dict(run=np.repeat(nights, len(classes)), cls=classes * len(nights),
                                dev=deviation.ravel(), share=np.stack(runs.share.to_numpy()).ravel()))
    mapper = LinearColorMapper(palette=list(RdBu11), low=-span, high=span)  # blue: fewer, red: more
    fig = figure(height=320, sizing_mode="stretch_width", x_range=nights, y_range=list(reversed(classes)),
                 title="Predicted class share minus reference, by night", tools="hover,save",
                 tooltips=[("run", "@run"), ("class", "@cls"), ("share", "@share{0.0%}"), ("change", "@dev{+0.0%}")])
    fig.rect("run", "cls", 1, 1, source=src, fill_color={"field": "dev", "transform": mapper}, line_color=None)
    fig.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
    fig.xaxis.major_label_orientation = 0.9
    return fig


def alert_list(alerts: pd.DataFrame) -> str:
    """The alerts ranked, each leading with its cause and where (alerts written before causes keep
    their kind)."""
    if alerts.empty:
        return "<ul class='bm-alerts'><li>none</li></ul>"
    ranked = alerts.sort_values("rank", na_position="last") if "rank" in alerts else alerts
    items = []
    for a in ranked.itertuples():
        cause = a.cause if isinstance(getattr(a, "cause", None), str) else a.kind
        items.append(f"<li class='bm-alert-{a.severity}'><b>{html.escape(cause)}</b> {html.escape(a.message)} "
                     f"<span class='bm-kind'>[{html.escape(a.kind)}]</span></li>")
    return f"<ol class='bm-alerts'>{''.join(items)}</ol>"


def segments_table(data: MonitoringData, run_id: str) -> pd.DataFrame:
    """Per segment of a run: rows, accuracy, the label-free estimate, novel share, duplicates, the
    input property that moved most, and the alerts that name it."""
    seg = data.segments(run_id)
    if seg.empty:
        return seg
    alerts = data.alerts_of(run_id)
    named = {}
    for a in alerts.itertuples():
        for value in (a.segment if isinstance(a.segment, str) else "").partition("=")[2].split(", "):
            named.setdefault(value, []).append(a.kind)

    def worst(r) -> str:
        ks = r.input_ks if r.input_ks is not None and len(r.input_ks) else None
        return "-" if ks is None else f"{r.input_properties[int(np.argmax(ks))]} (KS {max(ks):.2f})"

    return pd.DataFrame([{
        "segment": r.segment, "rows": int(r.rows), "accuracy": _pct(r.accuracy),
        "label-free": _pct(r.label_free_accuracy), "novel": _pct(r.novel_share),
        "duplicates": "-" if is_absent(r.duplicate_within) else int(r.duplicate_within + r.duplicate_recent),
        "moved most": worst(r), "alerts": " ".join(named.get(r.segment, [])),
    } for r in seg.itertuples()])


def gallery(data: MonitoringData, run_id: str | None) -> pn.Column:
    cases = data.failures(run_id) if run_id else pd.DataFrame()
    if cases.empty:
        return pn.Column(_html("<p>No failure cases for this run.</p>"))
    parts = []
    for kind, title in (("misclassified", "Most confident mistakes"), ("uncertain", "Least confident, unlabelled"),
                        ("novel", "Most unlike the training data (novelty score)"),
                        ("duplicate", "Copies of images scored before them")):
        figs = "".join(
            f"<figure><img src='data:image/png;base64,{base64.b64encode(c.thumbnail).decode()}' "
            f"title='{html.escape(c.image_id)}'><figcaption>{_class_name(c.true_class)} &rarr; "
            f"{_class_name(c.predicted_class)}<br>{c.confidence:.2f}</figcaption></figure>"
            for c in cases[cases.kind == kind].itertuples())
        parts.append(f"<h3>{title}</h3><div class='bm-gallery bm-{kind}'>{figs or 'none'}</div>")
    return pn.Column(_html("".join(parts)))


def models_view(store: Store) -> pn.Column:
    listed = list_registered(store)
    if not listed:
        return pn.Column(_html("<p>No models registered.</p>"))
    rows = [{"model": str(r.version), "aliases": ", ".join(r.aliases), "arch": r.card.arch,
             "created": r.card.created_at, "test accuracy": r.card.test_accuracy,
             "validation accuracy": r.card.metrics.validation.accuracy,
             "temperature": r.card.calibration.temperature, "epochs": r.card.training["epochs"],
             "train seconds": r.card.training_seconds, "fit": r.card.fit.verdict if r.card.fit else ""}
            for r in listed]
    newest = listed[-1]
    fig = figure(height=300, sizing_mode="stretch_width", title="Learning curves of the newest version: "
                 f"{newest.version}", x_axis_label="epoch", tools="save")
    for (key, color) in (("accuracy", "#1f77b4"), ("val_accuracy", "#ff7f0e"), ("loss", "#2ca02c"),
                         ("val_loss", "#d62728")):
        values = newest.card.learning_curves.get(key, [])
        fig.line(list(range(1, len(values) + 1)), values, color=color, line_width=2, legend_label=key)
    return pn.Column(_table(pd.DataFrame(rows), "bm-models"), pn.pane.Bokeh(fig, sizing_mode="stretch_width"))


def runs_view(data: MonitoringData, run_id: str | None) -> pn.Column:
    if not run_id:
        return pn.Column(_html("<p>No run selected.</p>"))
    m = data.manifest(run_id)
    parts = pd.DataFrame([{"partition": p["partition"], "rows": p["rows"], "errors": p["errors"],
                           **{f"{k} s": v for k, v in p["seconds"].items()}, "worker": p["worker"]}
                          for p in m.partitions])
    head = "".join([_value("run", run_id, "bm-runs-run"), _value("model", m.model_version, "bm-runs-model"),
                    _value("rows", f"{m.rows:,}", "bm-runs-rows"),
                    _value("images/s", f"{m.images_per_second or 0:,.0f}", "bm-runs-speed"),
                    _value("wall seconds", f"{m.wall_seconds:.1f}", "bm-runs-wall")])
    segments = segments_table(data, run_id)
    by_segment = [_html("<h3>Segments</h3>"), _table(segments, "bm-segments")] if not segments.empty else []
    return pn.Column(_html(head), *by_segment, _html("<h3>Partitions</h3>"), _table(parts, "bm-partitions"),
                     _html("<h3>Error rows</h3>"), _table(data.errors(run_id).head(200), "bm-errors"))
