"""A run's failure-case snapshot: its partitions' candidates (kept by scoring, the top ``KEEP`` of
each kind per partition) merged into the top ``KEEP`` of the run, with class names
(``monitoring/failures/<run_id>.parquet``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batchml import layout
from batchml.integrity import read_parquet
from batchml.records import FAILURE_SCHEMA as SCHEMA
from batchml.records import FAILURES_KEPT as KEEP
from batchml.store import Store


def snapshot(store: Store, run_id: str, partitions: list[str], classes: list[str]) -> pa.Table:
    """Merge a run's per-partition candidates into its snapshot (the top ``KEEP`` of each kind)."""
    done = set(store.list(layout.run_path(run_id, "failures"), ".parquet"))
    parts = [read_parquet(store, layout.run_output(run_id, "failures", p)) for p in partitions if p in done]
    df = pa.concat_tables(parts).to_pandas() if parts else SCHEMA.empty_table().to_pandas()
    wrong = df[df.kind == "misclassified"].sort_values("confidence", ascending=False).head(KEEP)
    unsure = df[df.kind == "uncertain"].sort_values("confidence").head(KEEP)
    novel = df[df.kind == "novel"].sort_values("confidence", ascending=False).head(KEEP)  # by novelty score
    copies = df[df.kind == "duplicate"].head(KEEP)
    out = pa.concat_tables([pa.Table.from_pandas(t, SCHEMA, preserve_index=False)
                            for t in (wrong, unsure, novel, copies)])
    names = np.asarray(classes, dtype=object)
    label = out["label"].to_numpy(zero_copy_only=False)
    true_class = [names[int(v)] if v == v else None for v in label]  # NaN for unknown labels
    return out.append_column("true_class", pa.array(true_class, pa.string())).append_column(
        "predicted_class", pa.array(names[out["predicted"].to_numpy()] if len(out) else [], pa.string()))
