"""Failure cases: per run, the most confidently misclassified labelled images and the least
confident unlabelled ones, with thumbnails, for study and for the dashboard.

Each scoring task keeps its partition's candidates (``runs/<id>/failures/part-N.parquet``);
monitoring merges them into ``monitoring/failures/<run_id>.parquet``. Keeping the top
``KEEP`` of each kind per partition is enough for the top ``KEEP`` of the run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batchml import layout
from batchml.data.images import encode_png
from batchml.store import Store

KEEP = 24  # images of each kind per run (and per partition)
SCHEMA = pa.schema([
    ("kind", pa.string()), ("image_id", pa.string()), ("partition", pa.string()), ("label", pa.int16()),
    ("predicted", pa.int16()), ("confidence", pa.float32()), ("thumbnail", pa.binary()),
])


def select(ids: list[str], partition: str, pixels: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> pa.Table:
    """Candidates of one partition; ``labels`` is -1 where unknown, aligned with ``pixels``."""
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero((labels >= 0) & (predicted != labels))
    unlabelled = np.flatnonzero(labels < 0)
    picks = [("misclassified", i) for i in wrong[np.argsort(-confidence[wrong])][:KEEP]]
    picks += [("uncertain", i) for i in unlabelled[np.argsort(confidence[unlabelled])][:KEEP]]
    return pa.Table.from_pylist([
        {"kind": kind, "image_id": ids[i], "partition": partition,
         "label": int(labels[i]) if labels[i] >= 0 else None, "predicted": int(predicted[i]),
         "confidence": float(confidence[i]), "thumbnail": encode_png(pixels[i])}
        for kind, i in picks
    ], SCHEMA)


def snapshot(store: Store, run_id: str, partitions: list[str], classes: list[str]) -> pa.Table:
    """Merge a run's per-partition candidates into its snapshot (the top ``KEEP`` of each kind)."""
    done = set(store.list(layout.run_folder(run_id, "failures"), ".parquet"))
    parts = [store.read_parquet(layout.run_output(run_id, "failures", p)) for p in partitions if p in done]
    df = pa.concat_tables(parts).to_pandas() if parts else SCHEMA.empty_table().to_pandas()
    wrong = df[df.kind == "misclassified"].sort_values("confidence", ascending=False).head(KEEP)
    unsure = df[df.kind == "uncertain"].sort_values("confidence").head(KEEP)
    out = pa.concat_tables([pa.Table.from_pandas(t, SCHEMA, preserve_index=False) for t in (wrong, unsure)])
    names = np.asarray(classes, dtype=object)
    label = out["label"].to_numpy(zero_copy_only=False)
    true_class = [names[int(v)] if v == v else None for v in label]  # NaN for unknown labels
    return out.append_column("true_class", pa.array(true_class, pa.string())).append_column(
        "predicted_class", pa.array(names[out["predicted"].to_numpy()] if len(out) else [], pa.string()))
