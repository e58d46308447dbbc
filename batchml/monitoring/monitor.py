"""Monitor a committed run, or summarise a range of monitored runs.

``monitor_run``: fold the run's statistics (``row``), read what earlier nights tell
(``baseline``), apply the rules once (``rules``), write the row, its alerts and a failure-case
snapshot (``tables``, ``failure_cases``). ``evaluate`` is the same without the store, for
benchmarks and tests that chain nights.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pandas as pd

from batchml import layout
from batchml.errors import BatchmlError
from batchml.labels import LabelSources, committed, label_sources
from batchml.layout import ModelVersion
from batchml.monitoring import failure_cases, rules
from batchml.monitoring.baseline import Baseline, history, listed, with_cusum
from batchml.monitoring.duplicates import duplicates, read_hashes
from batchml.monitoring.report import RunReport
from batchml.monitoring.row import build_row, fold_run, segment_by, summarise_rows
from batchml.monitoring.rules import MonitorConfig
from batchml.monitoring.segments import judge_segments, locate, short_segments
from batchml.monitoring.tables import read_run_row, read_table, write_alerts, write_run_row, write_segment_rows
from batchml.records import MONITORING_NEEDS, ModelCard, MonitoringRow, RunManifest
from batchml.registry import read_card
from batchml.stats import PartitionStats
from batchml.store import Store


def evaluate(run: RunManifest, stats: PartitionStats, card: ModelCard, baseline: Baseline | None = None,
             cfg: MonitorConfig = MonitorConfig(), hashes: pd.DataFrame | None = None,
             recent: dict[str, pd.DataFrame] | None = None, segment_by: str | None = None,
             labels: LabelSources | None = None, night: MonitoringRow | None = None) -> RunReport:
    """One run's row, its segments' rows and its alerts, most likely cause first, from its summed
    statistics, its card, its baseline, (where kept) its hashes and the recent nights', and where its
    labels came from; each rule runs once on the run and once on each segment. ``night``: the run's
    row as monitored before (None the first time), whose label-free estimate and alerts stay the
    night's when labels arrive later."""
    baseline = baseline or Baseline()
    duplicated = duplicates(hashes, recent or {}, len(run.classes)) if hashes is not None else None
    row = build_row(run, stats, card, baseline, duplicated or None, None, segment_by, labels)
    row.labels_needed = rules.labels_needed(row, cfg)
    single = rules.single_night_alerts(row, cfg) + [a for a in [rules.volume_drop(row, cfg, baseline.sizes)] if a]
    # the night's own alerts decide the CUSUM, as they decide the baseline: labels that arrive
    # days later must not change what later nights were compared with
    kinds = _night(night)["night_alert_kinds"] if night else [a.kind for a in single]
    counted = not any(k in rules.SINGLE_NIGHT for k in kinds)
    row = with_cusum(row, stats, baseline, counted)
    segment_rows, raised = judge_segments(run, stats, card, baseline, cfg, segment_by, hashes, recent, labels)
    alerts = locate(rules.with_persistent(row, cfg, single), raised, segment_by)
    alerts += short_segments(row, stats, baseline, cfg, segment_by)
    alerts = [replace(a, cause=rules.cause_of(a.kind), rank=i) for i, a in enumerate(rules.ranked(alerts, row), 1)]
    row.alert_kinds = [a.kind for a in alerts]
    for name, value in (_night(night) if night else _night(row)).items():
        setattr(row, name, value)
    if row.realized_accuracy is not None and row.night_label_free_accuracy is not None:
        row.label_free_error = row.night_label_free_accuracy - row.realized_accuracy
    return RunReport(row, alerts, segments=segment_rows)


def _night(row: MonitoringRow) -> dict:
    """What the first monitoring of a run measured (a row written before these columns: its own)."""
    def first(name: str, fallback: str):
        value = getattr(row, name)
        return getattr(row, fallback) if value is None else value

    return {"night_label_free_accuracy": first("night_label_free_accuracy", "label_free_accuracy"),
            "night_label_free_method": first("night_label_free_method", "label_free_method"),
            "night_alert_kinds": listed(first("night_alert_kinds", "alert_kinds")),
            "night_monitored_at": first("night_monitored_at", "monitored_at")}


def monitor_run(store: Store, run_id: str, cfg: MonitorConfig = MonitorConfig(),
                config_source: str | None = None) -> RunReport:
    """Monitor a committed run: write its row, its segments' rows, its alerts and failure-case snapshot.
    Monitoring it again (late labels, a repair) keeps what the night measured without labels (``evaluate``)."""
    manifest, stats = fold_run(store, run_id)
    card = read_card(store, ModelVersion.parse(manifest.model_version), MONITORING_NEEDS)
    hashes = read_hashes(store, manifest)
    recent = _recent_hashes(store, manifest, cfg.duplicate_nights) if len(hashes) else {}
    labels = label_sources(manifest, committed(store, run_id))
    report = evaluate(manifest, stats, card, history(store, manifest, cfg.history_nights), cfg,
                      hashes if len(hashes) else None, recent, segment_by(store, manifest), labels,
                      read_run_row(store, run_id))
    report.config_source = config_source
    write_run_row(store, report.row)
    write_segment_rows(store, run_id, report.segments)
    write_alerts(store, run_id, report.alerts)
    snapshot = failure_cases.snapshot(store, run_id, [p["partition"] for p in manifest.partitions], manifest.classes)
    store.write_parquet(layout.monitoring_path("failures", run_id), snapshot)
    return report


def _recent_hashes(store: Store, run: RunManifest, nights: int) -> dict[str, pd.DataFrame]:
    """The hashes of the model's last ``nights`` monitored runs committed before this one."""
    runs = read_table(store, "runs")
    earlier = runs[(runs.model_version == run.model_version) & (runs.run_id != run.run_id)
                   & (runs.committed_at <= run.committed_at)].sort_values("committed_at").tail(nights)
    out = {}
    for run_id in earlier.run_id:
        try:
            out[run_id] = read_hashes(store, RunManifest.read(store, run_id))
        except BatchmlError as e:  # a damaged neighbour must not stop tonight's monitoring
            print(f"warning: the hashes of run {run_id} are not compared with tonight's ({e})", file=sys.stderr)
    return out


def monitor_range(store: Store, since: str | None = None, until: str | None = None,
                  model_version: str | None = None) -> dict:
    """Labelled-sample statistics over the monitored runs committed in [since, until] (ISO dates)."""
    every = read_table(store, "runs")
    day = every.committed_at.str[:10]
    runs = every[(day >= (since or "")) & (day <= (until or "9999"))]
    if model_version:
        runs = runs[runs.model_version == model_version]
    if runs.empty:
        which = f" for {model_version}" if model_version else ""
        # dates are of the commit (when the night was scored), not of a night's own --date
        held = (f"the monitored runs were committed from {every.committed_at.min()[:10]} to "
                f"{every.committed_at.max()[:10]}: pick dates among those" if len(every)
                else "run `batchml monitor --run-id ID` first")
        raise BatchmlError(f"no monitored runs committed between {since or 'the start'} and {until or 'now'}"
                           f"{which}: {held}")
    classes = list(runs.classes.iloc[0])
    if any(list(c) != classes for c in runs.classes):
        raise BatchmlError("these runs predict different classes: pass --model to compare one model's runs")
    one_model = runs.model_version.nunique() == 1  # two models' thresholds and calibrations do not mix
    threshold = read_card(store, ModelVersion.parse(runs.model_version.iloc[0])).atc_threshold if one_model else None
    summary = summarise_rows(runs, classes, threshold)
    return {"runs": len(runs), "first_run": runs.committed_at.min(), "last_run": runs.committed_at.max(),
            "models": sorted(runs.model_version.unique()), **summary, **(_range_cot(runs) if one_model else {})}


def _range_cot(runs: pd.DataFrame) -> dict:
    """COT over a range: the nights' own estimates, weighted by rows (each was measured against the
    mix in force that night, which the folded statistics no longer know); absent unless every night
    has one."""
    cot = pd.to_numeric(runs.cot_accuracy, errors="coerce")
    if cot.isna().any() or runs.rows.sum() == 0:
        return {}
    value = float((cot * runs.rows).sum() / runs.rows.sum())
    return {"cot_accuracy": value, "label_free_accuracy": value, "label_free_method": "cot"}
