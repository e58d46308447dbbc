"""The monitoring tables: ``monitoring/runs/<run_id>.parquet`` (one row per run) and
``monitoring/alerts/<run_id>.parquet`` (zero or more rows). One file per run, so that
monitoring a run rewrites only its own rows; read each folder as one table."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batchml.store import Store

ALERT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("kind", pa.string()), ("severity", pa.string()),
    ("statistic", pa.float64()), ("threshold", pa.float64()), ("message", pa.string()),
])


def write_run_row(store: Store, row: dict) -> None:
    store.write_parquet(f"monitoring/runs/{row['run_id']}.parquet", pa.Table.from_pylist([row]))


def write_alerts(store: Store, run_id: str, alerts: list[dict]) -> None:
    rows = [{"run_id": run_id, **a} for a in alerts]
    store.write_parquet(f"monitoring/alerts/{run_id}.parquet", pa.Table.from_pylist(rows, ALERT_SCHEMA))


def read_table(store: Store, table: str) -> pd.DataFrame:
    """A whole monitoring table (``runs`` or ``alerts``) as one DataFrame."""
    names = store.list(f"monitoring/{table}", ".parquet")
    parts = [pq.read_table(io.BytesIO(store.read_bytes(f"monitoring/{table}/{n}"))) for n in names]
    if not parts:
        return pd.DataFrame(columns=ALERT_SCHEMA.names if table == "alerts" else ["run_id"])
    return pa.concat_tables(parts, promote_options="default").to_pandas()
