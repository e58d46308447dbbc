"""What training records in the model card for monitoring, and how monitoring reads it back: the
ATC threshold with the validation split's output histograms (``card.atc``), and the validation
rows themselves (``card.validation_rows``). Here, below both, so that training does not import
monitoring.
"""

from __future__ import annotations

import base64

import numpy as np

from batchml.stats import SCORE_BINS, PartitionStats, scale_temperature


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
