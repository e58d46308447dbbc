"""Temperature scaling (Guo et al. 2017), fitted on the validation split.

One scalar T divides the logits; T > 1 softens over-confident predictions. Monitoring
uses the calibrated confidences to estimate accuracy where no labels exist.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from batchml.stats import scale_temperature


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising validation NLL (searched over log T: it is convex there)."""
    result = minimize_scalar(
        lambda log_t: nll(scale_temperature(probs, float(np.exp(log_t))), labels),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(result.x))
