"""The analysts' dashboard: a Panel app over the monitoring tables of one store.

It reads only the monitoring tables, run manifests, error tables and model cards, never
the prediction files, so it stays fast however large runs get; the monitoring tables
are read incrementally (only per-run files changed since the last refresh).

Served by ``batchml dashboard`` or ``panel serve dashboards/monitor.py``.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import time
from datetime import date
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import RdBu11
from bokeh.plotting import figure
from panel.auth import BasicAuthProvider, BasicLoginHandler

from batchml import layout
from batchml.errors import BatchmlError
from batchml.layout import ModelVersion
from batchml.monitoring.classes import row_normalised
from batchml.monitoring.row import summarise_rows
from batchml.monitoring.tables import TableReader, empty_table
from batchml.records import RunManifest, is_absent
from batchml.registry import list_models, list_versions, read_aliases, read_card
from batchml.store import Store

REFRESH_SECONDS = 30
ALL_MODELS = "all models"


class MonitoringData:
    """What the dashboard reads, cached between refreshes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._runs, self._alerts = TableReader(store, "runs"), TableReader(store, "alerts")
        self.runs, self.alerts = empty_table("runs"), empty_table("alerts")  # until the first refresh()
        self.stamp: tuple = ()

    def refresh(self) -> None:
        """Re-read what changed; ``stamp`` changes exactly when something the views show did."""
        self.runs = self._runs.read().sort_values("committed_at").reset_index(drop=True)
        self.alerts = self._alerts.read()
        registry = tuple((name, tuple(list_versions(self.store, name)),
                          tuple(self.store.list_versions(layout.model_prefix(name), ".json").items()))
                         for name in list_models(self.store))
        failures = layout.monitoring_folder("failures")
        snapshots = tuple(self.store.list_versions(failures, ".parquet").items())  # written after the row
        self.stamp = (self._runs.stamp, self._alerts.stamp, snapshots, registry)

    def failures(self, run_id: str) -> pd.DataFrame:
        rel = layout.monitoring_path("failures", run_id)
        return self.store.read_parquet(rel).to_pandas() if self.store.exists(rel) else pd.DataFrame()

    def manifest(self, run_id: str) -> RunManifest:
        return RunManifest.read(self.store, run_id)

    def errors(self, run_id: str) -> pd.DataFrame:
        folder = layout.run_path(run_id, "errors")
        parts = [self.store.read_parquet(layout.run_output(run_id, "errors", n)).to_pandas()
                 for n in self.store.list(folder, ".parquet")]
        return pd.concat(parts) if parts else pd.DataFrame(columns=["image_id", "partition", "reason"])


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


# -- the views -------------------------------------------------------------------------------------


def overview(data: MonitoringData, runs: pd.DataFrame) -> pn.Column:
    if runs.empty:
        return pn.Column(_html(f"<p class='bm-empty'>No monitored runs in {html.escape(data.store.url())} "
                               "for this selection yet: run <code>batchml monitor --run-id ID</code>.</p>"))
    latest = runs.iloc[-1]
    alerts = data.alerts[data.alerts.run_id == latest.run_id]
    status = "FAILED" if (alerts.severity == "error").any() else "WARNING" if len(alerts) else "OK"
    figures = "".join([
        _value("latest run", latest.run_id, "bm-run-id"),
        _value("status", status, f"bm-status bm-status-{status.lower()}"),
        _value("rows scored", f"{int(latest.rows):,}", "bm-rows"),
        _value("errors", f"{int(latest.errors):,}", "bm-errors"),
        _value("accuracy", _pct(latest.accuracy), "bm-accuracy"),
        _value("label-free estimate", _pct(_label_free(runs).iloc[-1]), "bm-expected"),
        _value("open alerts", str(len(alerts)), "bm-open-alerts"),
    ])
    rows = "".join(f"<li class='bm-alert-{a.severity}'><b>{a.severity}</b> {html.escape(a.kind)}: "
                   f"{html.escape(a.message)}</li>" for a in alerts.itertuples())
    return pn.Column(_html(figures), _html(f"<h3>Alerts of {html.escape(latest.run_id)}</h3>"
                                           f"<ul class='bm-alerts'>{rows or '<li>none</li>'}</ul>"),
                     _html("<h3>Recent nights</h3>"), _table(recent_nights(data, runs), "bm-recent"))


RECENT_NIGHTS = 14  # nights listed on the overview


def recent_nights(data: MonitoringData, runs: pd.DataFrame) -> pd.DataFrame:
    """The latest nights, newest first: status and the kinds of alert each raised."""
    recent = runs.iloc[::-1].head(RECENT_NIGHTS)
    by_run = data.alerts.groupby("run_id")
    rows = []
    for r in recent.itertuples():
        alerts = by_run.get_group(r.run_id) if r.run_id in by_run.groups else data.alerts.iloc[:0]
        status = "FAILED" if (alerts.severity == "error").any() else "WARNING" if len(alerts) else "OK"
        rows.append({"run_id": r.run_id, "committed_at": r.committed_at, "status": status,
                     "alerts": ", ".join(sorted(set(alerts.kind))) or "-"})
    return pd.DataFrame(rows)


def _label_free(runs: pd.DataFrame) -> pd.Series:
    """The estimate the alerts use; runs monitored before ATC carry only calibrated confidence (the
    table reader gives every run the column, None where it was written before it)."""
    return runs.label_free_accuracy.fillna(runs.expected_accuracy)


def accuracy_over_time(runs: pd.DataFrame) -> pn.Column:
    labelled = runs[runs.labelled > 0]
    fig = figure(height=320, sizing_mode="stretch_width", x_axis_type="datetime", y_range=(0, 1),
                 title="Accuracy on labelled samples (band: 95% interval)", tools="pan,wheel_zoom,reset,save")
    if not runs.empty:
        src = ColumnDataSource(dict(t=pd.to_datetime(labelled.committed_at), acc=labelled.accuracy,
                                    low=labelled.accuracy_low, high=labelled.accuracy_high, run=labelled.run_id))
        fig.varea("t", "low", "high", source=src, alpha=0.2, color="#1f77b4")
        fig.line("t", "acc", source=src, line_width=2, legend_label="measured")
        fig.scatter("t", "acc", source=src, size=5)
        est = ColumnDataSource(dict(t=pd.to_datetime(runs.committed_at), est=_label_free(runs), run=runs.run_id))
        fig.line("t", "est", source=est, line_dash="dashed", color="#ff7f0e", legend_label="label-free estimate")
        unlabelled = runs[runs.labelled == 0]
        fig.scatter(pd.to_datetime(unlabelled.committed_at), _label_free(unlabelled), size=6, marker="triangle",
                    color="#ff7f0e", legend_label="unlabelled night (estimate)")
        fig.add_tools(HoverTool(tooltips=[("run", "@run"), ("accuracy", "@acc{0.000}")]))
        fig.legend.location = "bottom_left"
    cols = ["run_id", "committed_at", "labelled", "accuracy", "accuracy_low", "accuracy_high", "expected_accuracy"]
    table = _table(runs[cols].iloc[::-1], "bm-accuracy-table")
    return pn.Column(pn.pane.Bokeh(fig, sizing_mode="stretch_width"), table)


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


def gallery(data: MonitoringData, run_id: str | None) -> pn.Column:
    cases = data.failures(run_id) if run_id else pd.DataFrame()
    if cases.empty:
        return pn.Column(_html("<p>No failure cases for this run.</p>"))
    parts = []
    for kind, title in (("misclassified", "Most confident mistakes"), ("uncertain", "Least confident, unlabelled")):
        figs = "".join(
            f"<figure><img src='data:image/png;base64,{base64.b64encode(c.thumbnail).decode()}' "
            f"title='{html.escape(c.image_id)}'><figcaption>{_class_name(c.true_class)} &rarr; "
            f"{_class_name(c.predicted_class)}<br>{c.confidence:.2f}</figcaption></figure>"
            for c in cases[cases.kind == kind].itertuples())
        parts.append(f"<h3>{title}</h3><div class='bm-gallery bm-{kind}'>{figs or 'none'}</div>")
    return pn.Column(_html("".join(parts)))


def models_view(store: Store) -> pn.Column:
    rows, curves = [], []
    for name in list_models(store):
        aliases = read_aliases(store, name)
        for v in list_versions(store, name):
            card = read_card(store, ModelVersion(name, v))
            rows.append({"model": f"{name}/{v}", "aliases": ", ".join(a for a, t in aliases.items() if t == v),
                         "arch": card.arch, "created": card.created_at, "test accuracy": card.test_accuracy,
                         "validation accuracy": card.metrics.validation.accuracy,
                         "temperature": card.calibration.temperature,
                         "epochs": card.training["epochs"], "train seconds": card.training_seconds,
                         "fit": card.fit.verdict if card.fit else ""})
            curves.append((f"{name}/{v}", card.learning_curves))
    if not rows:
        return pn.Column(_html("<p>No models registered.</p>"))
    fig = figure(height=300, sizing_mode="stretch_width", title="Learning curves of the newest version: "
                 f"{curves[-1][0]}", x_axis_label="epoch", tools="save")
    for (key, color) in (("accuracy", "#1f77b4"), ("val_accuracy", "#ff7f0e"), ("loss", "#2ca02c"),
                         ("val_loss", "#d62728")):
        values = curves[-1][1].get(key, [])
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
    return pn.Column(_html(head), _html("<h3>Partitions</h3>"), _table(parts, "bm-partitions"),
                     _html("<h3>Error rows</h3>"), _table(data.errors(run_id).head(200), "bm-errors"))


# -- the app -------------------------------------------------------------------------------------------


def shared_data(store: Store) -> MonitoringData:
    """One cache per store for all sessions: a new browser tab re-reads nothing unchanged."""
    return pn.state.as_cached(f"batchml-data-{store.config.cache_key()}", lambda: MonitoringData(store))


def create_app(store: Store, refresh_seconds: int = REFRESH_SECONDS) -> pn.template.BaseTemplate:
    """One session's dashboard; its sidebar picks model version, date range and run."""
    pn.extension(raw_css=[CSS])
    data = shared_data(store)
    data.refresh()
    model = pn.widgets.Select(name="Model version", options=[ALL_MODELS])
    dates = pn.widgets.DateRangePicker(name="Committed between")
    run = pn.widgets.Select(name="Run")
    normalised = pn.widgets.Checkbox(name="Row-normalised confusion matrix")
    tick = pn.widgets.IntInput(value=0, visible=False)  # bumped when a periodic refresh finds news
    shown = data.stamp  # per session: the shared data may have been refreshed by another one

    def selected() -> pd.DataFrame:
        runs = data.runs
        if model.value != ALL_MODELS:
            runs = runs[runs.model_version == model.value]
        if dates.value:
            start, end = (d.isoformat() for d in dates.value)
            runs = runs[(runs.committed_at.str[:10] >= start) & (runs.committed_at.str[:10] <= end)]
        return runs

    def sync_options() -> None:
        runs = data.runs
        model.options = [ALL_MODELS, *sorted(runs.model_version.unique())]
        if dates.value is None and len(runs):
            dates.value = (date.fromisoformat(runs.committed_at.min()[:10]),
                           date.fromisoformat(runs.committed_at.max()[:10]))
        ids = list(selected().run_id[::-1])
        keep = run.value in ids
        run.options = ids
        if not keep:
            run.value = ids[0] if ids else None

    def refresh() -> None:
        nonlocal shown
        data.refresh()
        if data.stamp != shown:  # re-rendering unchanged views would flicker and reset scrolls
            shown = data.stamp
            sync_options()
            tick.value += 1

    sync_options()
    model.param.watch(lambda _: sync_options(), "value")
    dates.param.watch(lambda _: sync_options(), "value")

    def one_run(run_id, *_):
        runs = data.runs
        return runs[runs.run_id == run_id] if run_id else runs.iloc[0:0]

    def view(render, *deps):
        """A tab's content, computed only when the tab is shown, and an error box if it fails."""
        def guarded(*values):
            try:
                return render(*values)
            except Exception as exc:  # one broken view must not take the dashboard down
                return _html(f"<p class='bm-view-error'>This view failed: {html.escape(repr(exc))}</p>")
        return pn.panel(pn.bind(guarded, *deps, tick), lazy=True)

    tabs = pn.Tabs(
        ("Overview", view(lambda *_: overview(data, selected()), model, dates)),
        ("Accuracy", view(lambda *_: accuracy_over_time(selected()), model, dates)),
        ("Confusion", view(lambda r, n, *_: confusion_view(one_run(r), n), run, normalised)),
        ("Confusion (range)", view(lambda n, *_: confusion_view(selected(), n), normalised, model, dates)),
        ("Class mix", view(lambda *_: class_mix(selected()), model, dates)),
        ("Failures", view(lambda r, *_: gallery(data, r), run)),
        ("Models", view(lambda *_: models_view(store))),
        ("Runs", view(lambda r, *_: runs_view(data, r), run)),
        dynamic=True,  # render a tab when it is opened: the overview comes first and fast
    )
    if refresh_seconds:
        pn.state.add_periodic_callback(refresh, period=refresh_seconds * 1000)
    return pn.template.BootstrapTemplate(
        title="batchml monitoring",
        sidebar=[pn.pane.Markdown(f"**Store**  \n`{store.url()}`"), model, dates, run, normalised, tick],
        main=[tabs],
    )


# -- serving, with a throttled login -----------------------------------------------------------------

LOGIN_DELAY_SECONDS = 0.25  # before a client's 2nd login attempt after a failure; doubles with each failure
LOGIN_DELAY_MAX_SECONDS = 8.0  # so 50 guesses from one address take minutes, not a second
LOGIN_FORGET_SECONDS = 900  # an address's failures are forgotten after this long without one


class ThrottledLoginHandler(BasicLoginHandler):
    """Panel's password form, with a growing wait per client address after each wrong
    password; attempts from one address queue one behind the other, so parallel guesses
    wait too. Waiting is asynchronous: other users are not held up."""

    password: str | dict = ""
    failures: ClassVar[dict[str, tuple[int, float]]] = {}  # address -> (failed attempts, time of the last)
    locks: ClassVar[dict[str, asyncio.Lock]] = {}

    async def post(self) -> None:
        address = self.request.remote_ip or "?"
        async with self.locks.setdefault(address, asyncio.Lock()):
            count, last = self.failures.get(address, (0, 0.0))
            if time.monotonic() - last > LOGIN_FORGET_SECONDS:
                count = 0
            if count:
                await asyncio.sleep(min(LOGIN_DELAY_SECONDS * 2 ** (count - 1), LOGIN_DELAY_MAX_SECONDS))
            ok = self._validate(self.get_argument("username", ""), self.get_argument("password", ""))
            if ok:
                self.failures.pop(address, None)
            else:
                self.failures[address] = (count + 1, time.monotonic())
            super().post()

    def _validate(self, username: str, password: str) -> bool:
        known = self.password
        return known.get(username) == password if isinstance(known, dict) else password == known


class ThrottledAuthProvider(BasicAuthProvider):
    @property
    def login_handler(self):
        super().login_handler  # noqa: B018 - sets the handler's endpoint and template
        return ThrottledLoginHandler


def _auth_provider(basic_auth: str | None, cookie_secret: str | None) -> ThrottledAuthProvider | None:
    if not basic_auth:
        return None
    if not cookie_secret:  # without one Panel starts, then answers every request with HTTP 500
        raise BatchmlError(
            "--basic-auth needs --cookie-secret (or $BATCHML_COOKIE_SECRET) to sign login cookies: pass a random "
            "string, e.g. --cookie-secret \"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\"")
    users = Path(basic_auth)
    ThrottledLoginHandler.password = json.loads(users.read_text("utf-8")) if users.is_file() else basic_auth
    return ThrottledAuthProvider()


def serve(store: Store, port: int = 5006, address: str = "127.0.0.1", refresh_seconds: int = REFRESH_SECONDS,
          basic_auth: str | None = None, cookie_secret: str | None = None, show: bool = False,
          allow_origins: list[str] = ()) -> None:
    """Serve the dashboard until interrupted (``batchml dashboard``). ``allow_origins``: more
    host[:port] names browsers may reach it by (its DNS name, a reverse proxy)."""
    provider = _auth_provider(basic_auth, cookie_secret)
    shared_data(store).refresh()  # read the history before the first visitor arrives
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", *allow_origins]
    extra = {"auth_provider": provider} if provider else {}
    pn.serve(lambda: create_app(store, refresh_seconds), port=port, address=address, show=show,
             title="batchml monitoring", websocket_origin=origins, cookie_secret=cookie_secret,
             threaded=False, **extra)
