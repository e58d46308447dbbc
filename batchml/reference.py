"""What training records in the model card for monitoring, and how monitoring reads it back: the
ATC threshold with the validation split's output histograms (``card.atc``), the validation
rows themselves (``card.validation_rows``), and the training split's input health
(``card.input_health``). Here, below both, so that training does not import monitoring.
"""

from __future__ import annotations

import base64

import numpy as np

from batchml import layout
from batchml.data import datasets
from batchml.data.health import HEALTH_EDGES, PROPERTIES, measure
from batchml.data.images import Preprocessing, decode_batch
from batchml.stats import SCORE_BINS, PartitionStats, scale_temperature

HEALTH_SAMPLE = 10_000  # training rows, spread over every partition, whose health is the reference
_HEALTH_FIELDS = ("health_hist", "mode_counts", "channel_counts", "orientation_counts", "format_counts")


def atc_reference(probs: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """What the model card keeps for label-free monitoring: the ATC threshold on the validation
    split, and the validation histograms the output-shift tests compare nights with."""
    accuracy = float((scale_temperature(probs, temperature).argmax(axis=1) == labels).mean())
    stats = PartitionStats.from_predictions(probs, labels, temperature)
    return {
        "score": "negative_entropy",
        "threshold": threshold_for_share(stats.score_hist, accuracy),
        "validation_accuracy": accuracy,
        "score_hist": stats.score_hist.tolist(),
        "class_prob_hist": stats.class_prob_hist.tolist(),
    }


def share_above(hist: np.ndarray, threshold: float) -> float:
    """Share of a [0, 1] histogram above ``threshold``, linear inside the bin it falls in."""
    hist = np.asarray(hist, dtype=np.float64)
    position = float(np.clip(threshold, 0.0, 1.0)) * SCORE_BINS
    b = min(int(position), SCORE_BINS - 1)
    above = hist[b + 1:].sum() + hist[b] * (b + 1 - position)
    return float(above / hist.sum())


def threshold_for_share(hist: np.ndarray, share: float) -> float:
    """The threshold whose ``share_above`` in ``hist`` is ``share``: read on the same bins nights are,
    so the validation split's own estimate is its accuracy exactly, also when every row is right and
    sits in the top bin (where a raw quantile of 1.0 left nothing above it)."""
    hist = np.asarray(hist, dtype=np.float64)
    above = np.cumsum(hist[::-1])[::-1] / hist.sum()  # above[b]: share in bins b and up
    b = int(np.flatnonzero(above >= share).max())  # the bin the threshold falls in
    inside = (share - (above[b + 1] if b + 1 < SCORE_BINS else 0.0)) / max(hist[b] / hist.sum(), 1e-12)
    return float((b + 1 - min(inside, 1.0)) / SCORE_BINS)


def encode_rows(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Per-row validation probabilities (float16) and labels as the card keeps them: about
    2 bytes per class and row, 130 kB of JSON for 5,000 rows of 10 classes."""
    return {"rows": len(labels), "classes": int(probs.shape[1]),
            "probabilities": base64.b64encode(np.asarray(probs, np.float16).tobytes()).decode(),
            "labels": base64.b64encode(np.asarray(labels, np.int16).tobytes()).decode()}


def decode_rows(encoded: dict) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float64 probabilities and (N,) labels from ``encode_rows``."""
    probs = np.frombuffer(base64.b64decode(encoded["probabilities"]), np.float16)
    labels = np.frombuffer(base64.b64decode(encoded["labels"]), np.int16)
    return probs.reshape(encoded["rows"], encoded["classes"]).astype(np.float64), labels.astype(np.int64)


def health_reference(store, dataset: str, validation_fraction: float = 0.1, sample: int = HEALTH_SAMPLE,
                     prep: Preprocessing | None = None) -> dict:
    """The input health of the training split of ``dataset`` (its rows outside the validation split),
    on an even sample of about ``sample`` rows from every partition (ingest cuts class folders in
    order: the first partitions alone would be one class): what the card keeps as ``input_health``."""
    prep = prep or Preprocessing()
    manifest = datasets.read_manifest(store, dataset)
    per_partition = -(-sample // max(len(manifest.partitions), 1))
    total = PartitionStats(1)
    for part in manifest.partitions:
        table = store.read_parquet(layout.dataset_path(dataset, part["name"]), columns=["image_id", "image"])
        keep = np.flatnonzero(~datasets.in_validation(table["image_id"].to_pylist(), validation_fraction))
        if len(keep) > per_partition:
            keep = keep[np.linspace(0, len(keep) - 1, per_partition).round().astype(np.int64)]
        blobs = table["image"].take(keep).to_pylist()
        batch = decode_batch(blobs, prep, measure=True)
        health = measure([blobs[i] for i in batch.good], batch.pixels, batch.received)
        total = total + PartitionStats(1, rows=len(batch.good), **health.counts())
    return {"dataset": dataset, "split": "train", "rows": total.rows, "properties": list(PROPERTIES),
            "edges": HEALTH_EDGES.tolist(), **{f: getattr(total, f).tolist() for f in _HEALTH_FIELDS}}


def health_stats(entry: dict | None, num_classes: int) -> PartitionStats | None:
    """The card's ``input_health`` as statistics to compare a night's with (only the health fields
    and ``rows`` filled); None for a card without it, or one binned on other properties."""
    if not entry or entry.get("properties") != list(PROPERTIES):
        return None
    return PartitionStats(num_classes, rows=int(entry["rows"]), **{f: entry[f] for f in _HEALTH_FIELDS})
