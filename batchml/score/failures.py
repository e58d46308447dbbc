"""Failure cases: per run, the most confidently misclassified labelled images and the least
confident unlabelled ones, with thumbnails, for study and for the dashboard.

Each scoring task keeps its partition's candidates (``runs/<id>/failures/part-N.parquet``);
monitoring merges them into ``monitoring/failures/<run_id>.parquet``
(``batchml.monitoring.failure_cases``). Keeping the top ``KEEP`` of each kind per partition is
enough for the top ``KEEP`` of the run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batchml.data.images import encode_png
from batchml.records import FAILURE_SCHEMA as SCHEMA
from batchml.records import FAILURES_KEPT as KEEP


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
