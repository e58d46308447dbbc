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

from batchml.stats import BiasCorrection, scale_temperature


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


def fit_bcts(probs: np.ndarray, labels: np.ndarray) -> BiasCorrection:
    """The temperature and per-class bias minimising validation NLL, fitted jointly (fitting the bias
    on top of ``fit_temperature``'s T read clean nights' accuracy a point lower through COT, measured
    on the shift benchmark's model). Rows with non-finite probabilities are left out; a class with no
    validation rows keeps a bias of 0 (fitted, it would run off towards minus infinity)."""
    finite = np.isfinite(probs).all(axis=1)
    probs, labels = probs[finite], labels[finite]
    k = probs.shape[1]
    log_p = np.log(np.clip(probs, 1e-12, 1.0))
    onehot = np.eye(k)[labels]
    present = np.bincount(labels, minlength=k) > 0

    def nll_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        t, bias = np.exp(x[0]), np.where(present, x[1:], 0.0)
        z = log_p / t + bias
        z -= z.max(axis=1, keepdims=True)
        log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        delta = np.exp(log_q) - onehot  # d nll / d z, per row
        grad_t = -(delta * log_p).sum(axis=1).mean() / t  # d z / d log t = -log p / t
        grad_bias = np.where(present, delta.mean(axis=0), 0.0)
        return float(-(log_q * onehot).sum(axis=1).mean()), np.concatenate([[grad_t], grad_bias])

    x = minimize(nll_and_grad, np.zeros(k + 1), jac=True, method="L-BFGS-B",
                 bounds=[(np.log(0.05), np.log(20.0))] + [(None, None)] * k).x
    bias = np.where(present, x[1:], 0.0)
    bias[present] -= bias[present].mean()  # softmax ignores a common shift: centre the fitted ones
    return BiasCorrection(float(np.exp(x[0])), tuple(bias.tolist()))
