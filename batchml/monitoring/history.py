"""The nightly baseline: is tonight's predicted class mix unusual *for these nights*?

The reference test assumes each night is a fresh multinomial sample of the reference
mix; real nights also vary for ordinary reasons (sources, seasons). Here the recent clean
nights set the baseline: their pooled mix, and how much more than multinomial noise they
vary (the overdispersion factor ``phi``). Tonight's Pearson statistic against the pooled
mix, divided by ``phi``, is referred to chi-square.

The mix is each class's median share, and ``phi`` is the *median* of the nights' Pearson
statistics against it over the chi-square median, floored at 1 and capped at
``MAX_DISPERSION``: one blurred night with a statistic in the thousands moved the old
mean-based estimate until nothing could reject; it moves the median by one rank.
Nights that alerted are kept out of the history by the caller.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2

from batchml.monitoring.shift import degrees_of_freedom

MIN_NIGHTS = 5  # fewer nights of history: no baseline yet
# beyond this much extra variation the baseline itself is suspect: alarms beat blindness
MAX_DISPERSION = 4.0


def _pearson(counts: np.ndarray, expected_share: np.ndarray) -> float:
    n = counts.sum()
    if n <= 0:  # an empty night: nothing to compare (``no_rows`` says so)
        return 0.0
    used = expected_share > 0
    e = n * expected_share[used]
    return float(((counts[used] - e) ** 2 / e).sum())


def baseline_mix(history: list[np.ndarray]) -> np.ndarray:
    """The history's class mix: each class's median share over the nights, renormalised. A mean
    would let one wild night drag the mix, and with it every night's statistic."""
    hist = np.asarray(history, dtype=np.float64)
    shares = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    mix = np.median(shares, axis=0)
    return mix / mix.sum() if mix.sum() > 0 else np.full(hist.shape[1], 1 / hist.shape[1])


def dispersion(history: list[np.ndarray]) -> float:
    """Robust overdispersion of the history nights (1: plain multinomial noise)."""
    mix = baseline_mix(history)
    df = degrees_of_freedom(mix)
    stats = [_pearson(np.asarray(h, dtype=np.float64), mix) for h in history]
    return float(np.clip(np.median(stats) / chi2.median(df), 1.0, MAX_DISPERSION))


def history_shift(history: list[np.ndarray], counts: np.ndarray) -> dict | None:
    """Tonight's class counts against recent clean nights' counts; None with too little history."""
    if len(history) < MIN_NIGHTS:
        return None
    pooled = baseline_mix(history)
    df = degrees_of_freedom(pooled)
    phi = dispersion(history)
    counts = np.asarray(counts, dtype=np.float64)
    statistic = _pearson(counts, pooled)
    share = counts / counts.sum() if counts.sum() else pooled
    return {
        "history_nights": len(history),
        "history_chi2": statistic,
        "history_dispersion": phi,
        "history_p_value": float(chi2.sf(statistic / phi, df)),
        "history_js_distance": float(jensenshannon(share, pooled, base=2)),
    }
