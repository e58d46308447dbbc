"""Failure cases: per run, the most confidently misclassified labelled images, the least
confident unlabelled ones, the most novel (unlike the training data) and copies of an image scored
before them in the partition, with thumbnails, for study and for the dashboard.

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


def select(ids: list[str], partition: str, pixels: np.ndarray, probs: np.ndarray, labels: np.ndarray,
           novelty: np.ndarray | None = None, copies: np.ndarray | None = None) -> pa.Table:
    """Candidates of one partition; ``labels`` is -1 where unknown, aligned with ``pixels``;
    ``novelty`` the rows' novelty scores and ``copies`` whether each repeats an earlier row's bytes,
    where scoring measured them. A novel candidate's ``confidence`` holds its novelty score."""
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero((labels >= 0) & (predicted != labels))
    unlabelled = np.flatnonzero(labels < 0)
    picks = [("misclassified", i, confidence[i]) for i in wrong[np.argsort(-confidence[wrong])][:KEEP]]
    picks += [("uncertain", i, confidence[i]) for i in unlabelled[np.argsort(confidence[unlabelled])][:KEEP]]
    if novelty is not None and len(novelty):
        novel = np.flatnonzero(novelty > 1.0)
        picks += [("novel", i, novelty[i]) for i in novel[np.argsort(-novelty[novel])][:KEEP]]
    if copies is not None:
        picks += [("duplicate", i, confidence[i]) for i in np.flatnonzero(copies)[:KEEP]]
    return pa.Table.from_pylist([
        {"kind": kind, "image_id": ids[i], "partition": partition,
         "label": int(labels[i]) if labels[i] >= 0 else None, "predicted": int(predicted[i]),
         "confidence": float(value), "thumbnail": encode_png(pixels[i])}
        for kind, i, value in picks
    ], SCHEMA)
