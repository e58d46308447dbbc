"""Statistics for one run against a reference: intervals and class-distribution shift."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def degrees_of_freedom(shares: np.ndarray) -> int:
    """Of a chi-square over the classes with a non-zero share (at least 1): an empty class adds no cell."""
    return max(int(np.count_nonzero(np.asarray(shares) > 0)) - 1, 1)


def class_shift(counts: np.ndarray, reference: np.ndarray) -> dict:
    """Compare predicted class counts with the reference's.

    A chi-square test of homogeneity on the 2 x K table (both are samples, so the
    reference's own noise is accounted for), the Jensen-Shannon distance (base 2, in
    [0, 1]) as the effect size, and each class's share minus its reference share.
    """
    counts, reference = np.asarray(counts, float), np.asarray(reference, float)
    ref_share = reference / reference.sum()
    if not counts.sum():  # nothing predicted: no mix and no test (the no_rows alert says so)
        return {"chi2": 0.0, "p_value": 1.0, "js_distance": 0.0, "share": [0.0] * len(counts),
                "reference_share": ref_share.tolist(), "share_deviation": (-ref_share).tolist()}
    share = counts / counts.sum()
    used = (counts + reference) > 0  # a class neither predicted adds no information
    if used.sum() < 2:
        chi2, p_value = 0.0, 1.0
    else:
        chi2, p_value, _, _ = chi2_contingency(np.vstack([counts[used], reference[used]]), correction=False)
    return {
        "chi2": float(chi2),
        "p_value": float(p_value),
        "js_distance": float(jensenshannon(share, ref_share, base=2)),
        "share": share.tolist(),
        "reference_share": ref_share.tolist(),
        "share_deviation": (share - ref_share).tolist(),
    }
