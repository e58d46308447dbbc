"""Temperature scaling (Guo et al. 2017), fitted on the validation split, and the per-class
bias of bias-corrected temperature scaling (BCTS; Alexandari et al. 2020) on top of it.

One scalar T divides the logits; T > 1 softens over-confident predictions. Monitoring
uses the calibrated confidences to estimate accuracy where no labels exist, and the
bias-corrected probabilities to estimate class priors by EM (MLLS), which needs
probabilities calibrated class by class.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar

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


def fit_class_bias(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The per-class bias ``b`` minimising the NLL of softmax(log probs + b) on labelled rows
    (``probs`` already temperature-scaled): bias-corrected calibration's correction (BCTS)."""
    log_p = np.log(np.clip(probs, 1e-12, 1.0))
    onehot = np.eye(probs.shape[1])[labels]

    def nll_and_grad(b: np.ndarray) -> tuple[float, np.ndarray]:
        z = log_p + b
        z -= z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1, keepdims=True))
        q = np.exp(z - log_norm)
        return float(-((z - log_norm) * onehot).sum(axis=1).mean()), (q - onehot).mean(axis=0)

    b = minimize(nll_and_grad, np.zeros(probs.shape[1]), jac=True, method="L-BFGS-B").x
    return b - b.mean()  # softmax ignores a common shift: keep the bias centred
