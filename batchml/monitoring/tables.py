"""The monitoring tables: ``monitoring/runs/<run_id>.parquet`` (one row per run) and
``monitoring/alerts/<run_id>.parquet`` (zero or more rows). One file per run, so that
monitoring a run rewrites only its own rows; read each folder as one table. Their columns:
``batchml.records.MonitoringRow`` and ``Alert``. A damaged file is left out of what is read,
with a warning naming it (``batchml.integrity.DamagedFileWarning``): one torn file must not stop
every night's monitoring and the dashboard; ``batchml doctor --repair`` rebuilds it."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from batchml import layout
from batchml.integrity import skip_damaged
from batchml.records import Alert, MonitoringRow
from batchml.store import Store

RECORDS = {"runs": MonitoringRow, "alerts": Alert, "segments": MonitoringRow}
ALERT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("kind", pa.string()), ("severity", pa.string()),
    ("statistic", pa.float64()), ("threshold", pa.float64()), ("message", pa.string()),
    ("cause", pa.string()), ("segment", pa.string()), ("rank", pa.int64()), ("schema_version", pa.int64()),
])


def write_run_row(store: Store, row: MonitoringRow) -> None:
    """Write a run's row; columns this version does not know (``extra``) are kept."""
    store.write_parquet(layout.monitoring_path("runs", row.run_id), pa.Table.from_pylist([row.to_dict()]))


def write_segment_rows(store: Store, run_id: str, rows: list[MonitoringRow]) -> None:
    """A run's rows per segment (``monitoring/segments/<run_id>.parquet``); none for a run without
    segments (an earlier file of the run is replaced)."""
    path = layout.monitoring_path("segments", run_id)
    if rows:
        store.write_parquet(path, pa.Table.from_pylist([r.to_dict() for r in rows]))
    elif store.exists(path):
        store.delete(path)


def read_run_row(store: Store, run_id: str) -> MonitoringRow | None:
    """The run's row as last written; None where it was never monitored or the file is damaged
    (skipped with a warning, as ``read_table`` does)."""
    name = f"{run_id}.parquet"
    if not store.exists(layout.monitoring_file("runs", name)):
        return None
    table = TableReader(store, "runs")._read_file(name)
    return MonitoringRow.from_dict(table.to_pylist()[0]) if table is not None and table.num_rows else None


def read_run_alerts(store: Store, run_id: str) -> list[dict] | None:
    """The run's alerts as monitoring last wrote them (every monitored run has its file, empty where
    it raised none); None where that file is missing or damaged: the alerts are unknown, not none."""
    name = f"{run_id}.parquet"
    if not store.exists(layout.monitoring_file("alerts", name)):
        return None
    table = TableReader(store, "alerts")._read_file(name)
    return None if table is None else table.to_pylist()


def write_alerts(store: Store, run_id: str, alerts: list[Alert]) -> None:
    rows = [a.to_dict() for a in alerts]
    unknown = list(dict.fromkeys(k for r in rows for k in r if k not in ALERT_SCHEMA.names))
    inferred = pa.Table.from_pylist([{k: r.get(k) for k in unknown} for r in rows]).schema if unknown else []
    store.write_parquet(layout.monitoring_path("alerts", run_id),
                        pa.Table.from_pylist(rows, pa.schema([*ALERT_SCHEMA, *inferred])))


def empty_table(table: str) -> pd.DataFrame:
    """A table without rows, with its record's columns: readers need not ask whether a column exists."""
    return pd.DataFrame(columns=RECORDS[table].columns())


class TableReader:
    """Reads one monitoring table, re-reading only the per-run files changed since the last read
    (the dashboard refreshes every few seconds over a year of nights)."""

    def __init__(self, store: Store, table: str) -> None:
        self.store, self.table = store, table
        self._files: dict[str, tuple[str, pa.Table | None]] = {}  # None: damaged, skipped

    def read(self) -> pd.DataFrame:
        folder = layout.monitoring_folder(self.table)
        current = self.store.list_versions(folder, ".parquet")
        self._files = {
            name: self._files[name] if name in self._files and self._files[name][0] == tag
            else (tag, self._read_file(name))
            for name, tag in current.items()
        }
        parts = [t for _, t in self._files.values() if t is not None and t.num_rows]
        if not parts:
            return empty_table(self.table)
        df = pa.concat_tables(parts, promote_options="default").to_pandas()
        # files written before a column existed: the column reads as None, so readers need not ask
        missing = [c for c in RECORDS[self.table].columns() if c not in df]
        return df.assign(**dict.fromkeys(missing)) if missing else df

    def _read_file(self, name: str) -> pa.Table | None:
        rel = layout.monitoring_file(self.table, name)
        try:
            return self.store.read_parquet(rel)
        except (pa.ArrowException, OSError, ValueError) as exc:  # torn or not Parquet
            skip_damaged(self.store.url(rel), f"{type(exc).__name__}: {exc}")
            return None

    @property
    def stamp(self) -> tuple:
        """The version tags of the files last read: equal stamps, equal tables."""
        return tuple(sorted((name, tag) for name, (tag, _) in self._files.items()))


def read_table(store: Store, table: str) -> pd.DataFrame:
    """A whole monitoring table (``runs`` or ``alerts``) as one DataFrame; without rows, with its columns."""
    return TableReader(store, table).read()
