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


MIN_CLASS_ROWS = 20  # fewer labelled rows of a class (or predictions of it) tonight: no test of it


def drop_p_values(confusion, reference) -> dict[str, list[float | None]]:
    """One-sided p-values that each class's recall and precision tonight are lower than in
    ``reference`` (a confusion matrix of the same classes): two-proportion z-tests, uncorrected
    (the rule corrects for the 2K tests). None where tonight has too few rows of the class."""
    cm, ref = np.asarray(confusion, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    tp, ref_tp = np.diag(cm), np.diag(ref)
    return {"recall_p_value": _drop_p(tp, cm.sum(axis=1), ref_tp, ref.sum(axis=1)),
            "precision_p_value": _drop_p(tp, cm.sum(axis=0), ref_tp, ref.sum(axis=0))}


def _drop_p(hits: np.ndarray, n: np.ndarray, ref_hits: np.ndarray, ref_n: np.ndarray) -> list[float | None]:
    from scipy.stats import norm

    out = []
    for x, m, rx, rm in zip(hits, n, ref_hits, ref_n, strict=True):
        if m < MIN_CLASS_ROWS or rm < MIN_CLASS_ROWS:
            out.append(None)
            continue
        pooled = (x + rx) / (m + rm)
        se = np.sqrt(pooled * (1 - pooled) * (1 / m + 1 / rm))
        out.append(float(norm.sf((rx / rm - x / m) / se)) if se > 0 else (0.0 if x / m < rx / rm else 1.0))
    return out


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None): the family-wise error over the tests
    that were made stays at the level they are compared with."""
    made = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted, running = [None] * len(p_values), 0.0
    for rank, (p, i) in enumerate(made):
        running = max(running, min(1.0, p * (len(made) - rank)))
        adjusted[i] = running
    return adjusted
