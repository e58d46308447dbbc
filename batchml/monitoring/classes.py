"""Per-class metrics from a confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

import numpy as np


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    """num / den per class, None where the denominator is 0 (undefined, not zero)."""
    return [float(n / d) if d else None for n, d in zip(num, den, strict=True)]


def per_class_metrics(confusion) -> dict[str, list[float | None]]:
    """Precision, recall, F1, false positive and false negative rates, and support."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = [2 * p * r / (p + r) if p is not None and r is not None and p + r else None
          for p, r in zip(precision, recall, strict=True)]
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": _ratio(fp, fp + tn),
        "fnr": _ratio(fn, tp + fn),
        "support": cm.sum(axis=1).astype(int).tolist(),
    }


def row_normalised(confusion) -> np.ndarray:
    """Each true class's row as shares (a row with no examples stays 0)."""
    cm = np.asarray(confusion, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
