"""What a run's labels say about its night: realized accuracy with its interval, and whether the
labels can say it at all.

Labels drawn at random (and those present at ingest) estimate the night's accuracy as they are.
Reviewers often label the uncertain images first; such a sample's accuracy is far under the
night's. Because its selection depends on the confidence, which is known for every row, it is
reweighted: each confidence bin's accuracy on its labelled rows, weighted by the bin's share of
all the night's rows (post-stratification). A sample drawn some other way (``other``) is not
representative, and is reported as such rather than judged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from batchml.stats import PartitionStats

MIN_STRATUM_LABELS = 10  # labelled rows per stratum: neighbouring confidence bins are merged up to it
# rows in strata merged without labels of their own may be at most this share of the night: beyond
# it the sample does not reach the confidences most rows have, and reweighting would extrapolate
MAX_UNREACHED_SHARE = 0.05
Z = 1.959964  # 95% normal quantile


def realized(stats: PartitionStats, sampling: Sequence[str]) -> dict:
    """``realized_accuracy`` (with ``_low``, ``_high``), ``realized_method`` and ``label_coverage`` of a
    run's summed statistics, its labels drawn as ``sampling`` says (ingest, random, uncertain, other)."""
    out = {"label_coverage": stats.labelled / stats.rows if stats.rows else None, "realized_accuracy": None,
           "realized_accuracy_low": None, "realized_accuracy_high": None, "realized_method": None}
    if not stats.labelled:
        return out
    if "other" in sampling:
        return {**out, "realized_method": "not representative"}
    if "uncertain" not in sampling:
        # here, not at the top: monitoring imports this package to fold the labels in
        from batchml.monitoring.shift import wilson_interval

        low, high = wilson_interval(stats.correct, stats.labelled)
        return {**out, "realized_accuracy": stats.correct / stats.labelled, "realized_accuracy_low": low,
                "realized_accuracy_high": high, "realized_method": "labelled"}
    estimate = reweighted(stats) if stats.has("labelled_hist") else None
    if estimate is None:
        return {**out, "realized_method": "not representative"}
    value, low, high = estimate
    return {**out, "realized_accuracy": value, "realized_accuracy_low": low, "realized_accuracy_high": high,
            "realized_method": "reweighted"}


def reweighted(stats: PartitionStats) -> tuple[float, float, float] | None:
    """Accuracy post-stratified by confidence bin, with a 95% normal interval; None where the labels
    leave more than ``MAX_UNREACHED_SHARE`` of the rows in strata without labels of their own."""
    rows = stats.confidence_hist.astype(np.float64)
    labelled, correct = stats.labelled_hist.astype(np.float64), stats.correct_hist.astype(np.float64)
    total = rows.sum()
    if total <= 0:
        return None
    unreached = rows[labelled == 0].sum() / total
    if unreached > MAX_UNREACHED_SHARE:
        return None
    value = variance = 0.0
    for stratum in strata(labelled):
        n, held, right = rows[stratum].sum(), labelled[stratum].sum(), correct[stratum].sum()
        w = n / total
        value += w * right / held
        p = (right + 1) / (held + 2)  # Agresti's adjustment: a stratum all right or all wrong still has spread
        variance += w * w * p * (1 - p) / held
    half = Z * variance ** 0.5
    return value, max(0.0, value - half), min(1.0, value + half)


def strata(labelled: np.ndarray) -> list[slice]:
    """Neighbouring bins merged from the low end until each stratum holds ``MIN_STRATUM_LABELS``
    labelled rows; a short last stratum joins the one before it."""
    out, start, held = [], 0, 0.0
    for b, n in enumerate(labelled):
        held += n
        if held >= MIN_STRATUM_LABELS:
            out.append(slice(start, b + 1))
            start, held = b + 1, 0.0
    if start < len(labelled):
        if out and held < MIN_STRATUM_LABELS:
            out[-1] = slice(out[-1].start, len(labelled))
        elif held:
            out.append(slice(start, len(labelled)))
    return out
