"""What the dashboard shows, read from the store and cached between refreshes: the monitoring
tables, each run's status, run manifests, error tables, failure snapshots and the registry.

It reads only the monitoring tables, run manifests, error tables and model cards, never
the prediction files, so it stays fast however large runs get; the monitoring tables
are read incrementally (only per-run files changed since the last refresh).
"""

from __future__ import annotations

import pandas as pd
import panel as pn

from batchml import layout
from batchml.monitoring.tables import TableReader, empty_table
from batchml.records import RunManifest
from batchml.registry import list_models, list_versions
from batchml.store import Store

RECENT_NIGHTS = 14  # nights listed on the overview
STATUSES = ("OK", "WARNING", "FAILED")  # no alert; alerts, none of severity error; an error alert


def run_status(alerts: pd.DataFrame) -> pd.Series:
    """Each alerted run's status (runs without alerts are OK), by run id."""
    if alerts.empty:
        return pd.Series(dtype=object)
    failed = alerts.severity.eq("error").groupby(alerts.run_id).any()
    return failed.map({True: "FAILED", False: "WARNING"})


def label_free(runs: pd.DataFrame) -> pd.Series:
    """The estimate the alerts use; runs monitored before ATC carry only calibrated confidence (the
    table reader gives every run the column, None where it was written before it)."""
    return runs.label_free_accuracy.fillna(runs.expected_accuracy)


def accuracy_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run, oldest first: the label-free estimate the night made, the realized accuracy its labels
    give as they arrive (``realized_*``; rows monitored before late labels: their labelled accuracy)
    with its 95% interval, how it was found, the label coverage, and the estimate's error."""
    def column(name: str) -> pd.Series:
        return pd.to_numeric(runs[name], errors="coerce") if name in runs else pd.Series(float("nan"), runs.index)

    before = runs.realized_method.isna() if "realized_method" in runs else pd.Series(True, runs.index)
    realized = column("realized_accuracy").where(~before, column("accuracy"))
    night = column("night_label_free_accuracy").fillna(pd.to_numeric(label_free(runs), errors="coerce"))
    coverage = column("label_coverage").fillna(column("labelled") / column("rows").where(column("rows") > 0))
    return pd.DataFrame({
        "run_id": runs.run_id, "committed_at": runs.committed_at, "labelled": runs.labelled,
        "label_coverage": coverage,
        "realized_accuracy": realized,
        "realized_low": column("realized_accuracy_low").where(~before, column("accuracy_low")),
        "realized_high": column("realized_accuracy_high").where(~before, column("accuracy_high")),
        "realized_method": runs.realized_method.where(~before, "labelled") if "realized_method" in runs
        else "labelled",
        "night_estimate": night,
        "estimate_error": night - realized,
    }).reset_index(drop=True)


class MonitoringData:
    """What the dashboard reads, cached between refreshes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._runs, self._alerts = TableReader(store, "runs"), TableReader(store, "alerts")
        self.runs, self.alerts = empty_table("runs"), empty_table("alerts")  # until the first refresh()
        self._status = pd.Series(dtype=object)
        self.stamp: tuple = ()

    def refresh(self) -> None:
        """Re-read what changed; ``stamp`` changes exactly when something the views show did."""
        self.runs = self._runs.read().sort_values("committed_at").reset_index(drop=True)
        self.alerts = self._alerts.read()
        self._status = run_status(self.alerts)  # once per refresh, for every view
        registry = tuple((name, tuple(list_versions(self.store, name)),
                          tuple(self.store.list_versions(layout.model_prefix(name), ".json").items()))
                         for name in list_models(self.store))
        failures = layout.monitoring_folder("failures")
        snapshots = tuple(self.store.list_versions(failures, ".parquet").items())  # written after the row
        self.stamp = (self._runs.stamp, self._alerts.stamp, snapshots, registry)

    def status(self, run_id: str) -> str:
        """OK, WARNING or FAILED (``STATUSES``)."""
        return self._status.get(run_id, "OK")

    def alerts_of(self, run_id: str) -> pd.DataFrame:
        return self.alerts[self.alerts.run_id == run_id]

    def segments(self, run_id: str) -> pd.DataFrame:
        """The run's rows per segment; empty for a run scored without segments (or whose file is damaged)."""
        return self._run_file("segments", run_id)

    def failures(self, run_id: str) -> pd.DataFrame:
        return self._run_file("failures", run_id)

    def _run_file(self, table: str, run_id: str) -> pd.DataFrame:
        """A run's monitoring file; a damaged one is skipped with a warning naming it, as the tables' readers
        do (``batchml doctor`` names it too): empty, never a failed view."""
        if not self.store.exists(layout.monitoring_path(table, run_id)):
            return pd.DataFrame()
        read = TableReader(self.store, table)._read_file(f"{run_id}.parquet")  # its skip rule
        return read.to_pandas() if read is not None else pd.DataFrame()

    def manifest(self, run_id: str) -> RunManifest:
        return RunManifest.read(self.store, run_id)

    def errors(self, run_id: str) -> pd.DataFrame:
        folder = layout.run_path(run_id, "errors")
        parts = [self.store.read_parquet(layout.run_output(run_id, "errors", n)).to_pandas()
                 for n in self.store.list(folder, ".parquet")]
        return pd.concat(parts) if parts else pd.DataFrame(columns=["image_id", "partition", "reason"])


def recent_nights(data: MonitoringData, runs: pd.DataFrame) -> pd.DataFrame:
    """The latest of ``runs``, newest first: status and the kinds of alert each raised."""
    kinds = data.alerts.groupby("run_id").kind.agg(lambda k: ", ".join(sorted(set(k))))
    recent = runs.iloc[::-1].head(RECENT_NIGHTS)
    return pd.DataFrame([{"run_id": r.run_id, "committed_at": r.committed_at, "status": data.status(r.run_id),
                          "alerts": kinds.get(r.run_id, "-")} for r in recent.itertuples()],
                        columns=["run_id", "committed_at", "status", "alerts"])


def shared_data(store: Store) -> MonitoringData:
    """One cache per store for all sessions: a new browser tab re-reads nothing unchanged."""
    return pn.state.as_cached(f"batchml-data-{store.config.cache_key()}", lambda: MonitoringData(store))
