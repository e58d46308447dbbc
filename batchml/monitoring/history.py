"""The nightly baseline: is tonight's predicted class mix unusual *for these nights*?

The reference test assumes each night is a fresh multinomial sample of the reference
mix; real nights also vary for ordinary reasons (sources, seasons), which would make that
test fire on normal nights. Here the recent nights set the baseline: their pooled mix,
and how much more than multinomial noise they vary (the overdispersion factor ``phi``,
a quasi-likelihood estimate from the nights' own Pearson statistics). Tonight's Pearson
statistic against the pooled mix, divided by ``phi``, is referred to chi-square.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2

MIN_NIGHTS = 5  # fewer nights of history: no baseline yet


def _pearson(counts: np.ndarray, expected_share: np.ndarray) -> float:
    n = counts.sum()
    used = expected_share > 0
    e = n * expected_share[used]
    return float(((counts[used] - e) ** 2 / e).sum())


def history_shift(history: list[np.ndarray], counts: np.ndarray) -> dict | None:
    """Tonight's class counts against recent nights' counts; None with too little history."""
    if len(history) < MIN_NIGHTS:
        return None
    hist = np.asarray(history, dtype=np.float64)
    pooled = hist.sum(axis=0) / hist.sum()
    df = max(int((pooled > 0).sum()) - 1, 1)
    # each historical night against the pool of the others, so it is not compared with itself
    stats = [_pearson(h, (hist.sum(axis=0) - h) / (hist.sum() - h.sum())) for h in hist]
    phi = max(1.0, float(np.mean(stats)) / df)
    statistic = _pearson(np.asarray(counts, dtype=np.float64), pooled)
    return {
        "history_nights": len(history),
        "history_chi2": statistic,
        "history_dispersion": phi,
        "history_p_value": float(chi2.sf(statistic / phi, df)),
    }
