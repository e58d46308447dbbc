"""Accumulated evidence for persistent shifts: a CUSUM per class and direction over nights.

A class whose share moves by 1.3x is invisible to one night's omnibus test at n = 2,000
(a z of about 3 on one of K cells), but the evidence adds up over nights. For each class
``k`` two one-sided Bernoulli CUSUMs (Page, 1954) test the baseline share ``p0`` against
``RATIO * p0`` and ``p0 / RATIO``; each night adds its log-likelihood ratio (divided by
the baseline's overdispersion) and the sum is floored at 0. An alarm is a sum above
``THRESHOLD`` nats.

Its false-alarm rate over a year of clean nights and its delay to detection are measured in
the README's measured section; tests/test_monitoring.py pins at most 0.5 false alarms a year.
"""

from __future__ import annotations

import numpy as np

RATIO = 1.2  # the relative change of a predicted class share the sums are tuned to find
THRESHOLD = 9.0  # nats of evidence for an alarm


def night_evidence(counts: np.ndarray, baseline_share: np.ndarray, phi: float = 1.0) -> np.ndarray:
    """(2, K) log-likelihood ratios of tonight's counts: row 0 share up by RATIO, row 1 down."""
    x = np.asarray(counts, dtype=np.float64)
    n = x.sum()
    p0 = np.clip(np.asarray(baseline_share, dtype=np.float64), 1e-6, 1 - 1e-6)
    out = []
    for p1 in (np.minimum(p0 * RATIO, 1 - 1e-6), p0 / RATIO):
        out.append(x * np.log(p1 / p0) + (n - x) * np.log((1 - p1) / (1 - p0)))
    return np.asarray(out) / phi


def cusum_step(state: np.ndarray | None, evidence: np.ndarray) -> np.ndarray:
    """Tonight's sums from last night's (None: start from 0)."""
    previous = np.zeros_like(evidence) if state is None else np.asarray(state, dtype=np.float64)
    return np.maximum(0.0, previous + evidence)


def alarm(state: np.ndarray) -> tuple[int, int] | None:
    """(direction, class) of the largest sum above the threshold; direction 0 up, 1 down."""
    state = np.asarray(state, dtype=np.float64)
    if state.max() <= THRESHOLD:
        return None
    d, k = np.unravel_index(int(state.argmax()), state.shape)
    return int(d), int(k)
