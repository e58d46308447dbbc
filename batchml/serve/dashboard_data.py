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
        """The run's rows per segment; empty for a run scored without segments."""
        rel = layout.monitoring_path("segments", run_id)
        return self.store.read_parquet(rel).to_pandas() if self.store.exists(rel) else pd.DataFrame()

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
