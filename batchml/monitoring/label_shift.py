"""Black-box shift estimation (Lipton, Wang and Smola, 2018) of the true class priors of an
unlabelled run, from the model's confusion matrix on its validation split.

Under label shift p(x | y) is fixed, so the predicted-class distribution of a run is
``mu = C w`` where ``C[i, j] = P_val(predicted i, true j)`` and ``w_j = q_j / p_j`` are
the importance weights of the new priors ``q`` over the validation priors ``p``. Solving
for ``w`` gives ``q``; importance weights cannot be negative, so ``w`` is the non-negative
least-squares solution (measured here: a lower error than solving and clipping, above
all for classes that are nearly absent from a run). The soft variant uses summed class probabilities instead of
counts of arg-max predictions, which has lower variance when the model is calibrated.

Intervals: ``bootstrap_priors`` resamples the validation rows (whose probabilities and labels
the card keeps, ``validation_rows``) to redraw ``C``, and redraws the run's ``mu`` from its
sampling noise, then takes percentiles of the re-solved priors. Unlike the normal
approximation it counts the validation matrix's own error and the non-negativity bound.

MLLS (maximum-likelihood label shift by EM; Saerens et al. 2002) with bias-corrected calibration
(Alexandari, Kundaje and Shrikumar, ICML 2020) is reported beside BBSE. EM reweights each row's
calibrated probabilities by ``w = q / p`` until the reweighted probabilities average to ``q``.
It needs rows; the partitions keep instead the summed calibrated probability vectors of cells
of rows (predicted class x top-probability bin, ``PartitionStats.cell_prob_sums``), and EM runs
on the cell means: within a narrow cell rows are alike, so reweighting the mean stands in for
reweighting each (measured on the benchmark's nights: see the README). The bias-corrected
calibration (``stats.BiasCorrection``, the card's ``calibration.bcts``) is fitted on the
validation split at training and applied by scoring before the cells are summed: applied to
cell means afterwards it would be one more approximation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.optimize import nnls

from batchml.reference import decode_rows

MAX_CONDITION = 100.0  # beyond this, C amplifies sampling noise too much to trust q
BOOTSTRAP_DRAWS = 200  # resamples of the validation rows: percentiles of 95% intervals settle by then


def estimate_priors(val_joint: np.ndarray, run_mu: np.ndarray, n: int, z: float = 1.959964) -> dict:
    """``val_joint`` (K, K) true x predicted on validation (counts or summed probabilities),
    ``run_mu`` (K,) the run's predicted distribution (shares), ``n`` the run's rows.

    Returns the estimated priors with normal-approximation 95% intervals (from the run's
    multinomial sampling noise through the unconstrained solution; the validation matrix
    is taken as exact, so they are too narrow when it was estimated on few rows), and the
    condition number of ``C`` with a verdict on whether it is well conditioned.
    """
    joint = np.asarray(val_joint, dtype=np.float64)
    joint = joint / joint.sum()
    c = joint.T  # C[i, j] = P(predicted i, true j)
    p_val = joint.sum(axis=1)  # validation priors of the true classes
    mu = np.asarray(run_mu, dtype=np.float64)
    condition = float(np.linalg.cond(c))
    c_inv = np.linalg.pinv(c)
    q = solve_priors(joint, mu)
    cov_mu = (np.diag(mu) - np.outer(mu, mu)) / max(n, 1)
    cov_q = np.diag(p_val) @ c_inv @ cov_mu @ c_inv.T @ np.diag(p_val)
    half = z * np.sqrt(np.clip(np.diag(cov_q), 0, None))
    return {
        "priors": q.tolist(),
        "priors_low": np.clip(q - half, 0, 1).tolist(),
        "priors_high": np.clip(q + half, 0, 1).tolist(),
        "condition_number": condition,
        "well_conditioned": condition <= MAX_CONDITION,
    }


def solve_priors(val_joint: np.ndarray, run_mu: np.ndarray) -> np.ndarray:
    """The BBSE point estimate alone (the non-negative least-squares solution, normalised)."""
    joint = np.asarray(val_joint, dtype=np.float64)
    joint = joint / joint.sum()
    p_val = joint.sum(axis=1)
    w, _ = nnls(joint.T, np.asarray(run_mu, dtype=np.float64))
    q = w * p_val
    return q / q.sum() if q.sum() > 0 else p_val


@lru_cache(maxsize=4)
def _bootstrap_joints(probabilities: str, labels: str, rows: int, classes: int, draws: int) -> np.ndarray:
    """(draws, K, K) validation matrices of resampled rows; cached: every night of a model reuses them."""
    probs, y = decode_rows({"rows": rows, "classes": classes, "probabilities": probabilities, "labels": labels})
    rng = np.random.default_rng(0)  # fixed: a run monitored twice gets the same interval
    onehot = np.eye(classes)[y]  # (N, K)
    weights = rng.multinomial(rows, np.full(rows, 1 / rows), size=draws)  # (draws, N) times each row is drawn
    return np.einsum("bn,nt,np->btp", weights, onehot, probs)


def bootstrap_priors(encoded: dict, run_mu: np.ndarray, n: int, level: float = 0.95,
                     draws: int = BOOTSTRAP_DRAWS) -> tuple[list[float], list[float]]:
    """Percentile interval of each class's prior: validation rows resampled, the run's ``mu``
    redrawn from a normal with multinomial covariance (an upper bound for summed probabilities)."""
    joints = _bootstrap_joints(encoded["probabilities"], encoded["labels"], encoded["rows"],
                               encoded["classes"], draws)
    mu = np.asarray(run_mu, dtype=np.float64)
    rng = np.random.default_rng(1)
    cov = (np.diag(mu) - np.outer(mu, mu)) / max(n, 1)
    mus = np.clip(rng.multivariate_normal(mu, cov, size=draws, method="eigh"), 0, None)
    q = np.array([solve_priors(j, m / m.sum()) for j, m in zip(joints, mus, strict=True)])
    tail = 100 * (1 - level) / 2
    return np.percentile(q, tail, axis=0).tolist(), np.percentile(q, 100 - tail, axis=0).tolist()


def mlls_priors(cell_counts: np.ndarray, cell_prob_sums: np.ndarray, source_priors: np.ndarray,
                iterations: int = 500, tolerance: float = 1e-7) -> np.ndarray | None:
    """EM estimate of the class priors of the rows summarised by ``cell_counts`` (cells,) and
    ``cell_prob_sums`` (cells, K) of calibrated probabilities (any leading shape), given the
    priors ``source_priors`` (K,) the model was calibrated under; None where a probability is not finite."""
    k = len(source_priors)
    counts = np.asarray(cell_counts, dtype=np.float64).reshape(-1)
    sums = np.asarray(cell_prob_sums, dtype=np.float64).reshape(-1, k)
    keep = counts > 0
    counts, means = counts[keep], sums[keep] / counts[keep, None]
    means /= means.sum(axis=1, keepdims=True)
    if not np.isfinite(means).all():  # a model that output NaN somewhere: no estimate, not a crash
        return None
    p = np.asarray(source_priors, dtype=np.float64) / np.sum(source_priors)
    q = p.copy()
    for _ in range(iterations):
        weighted = means * np.divide(q, p, out=np.zeros(k), where=p > 0)
        posterior = weighted / np.maximum(weighted.sum(axis=1, keepdims=True), 1e-300)
        new = counts @ posterior / counts.sum()
        if np.abs(new - q).max() < tolerance:
            return new
        q = new
    return q
