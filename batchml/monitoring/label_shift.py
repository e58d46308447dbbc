"""Black-box shift estimation (Lipton, Wang and Smola, 2018) of the true class priors of an
unlabelled run, from the model's confusion matrix on its validation split.

Under label shift p(x | y) is fixed, so the predicted-class distribution of a run is
``mu = C w`` where ``C[i, j] = P_val(predicted i, true j)`` and ``w_j = q_j / p_j`` are
the importance weights of the new priors ``q`` over the validation priors ``p``. Solving
for ``w`` gives ``q``; importance weights cannot be negative, so ``w`` is the non-negative
least-squares solution (measured here: a lower error than solving and clipping, above
all for classes that are nearly absent from a run). The soft variant uses summed class probabilities instead of
counts of arg-max predictions, which has lower variance when the model is calibrated.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

MAX_CONDITION = 100.0  # beyond this, C amplifies sampling noise too much to trust q


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
    w, _ = nnls(c, mu)
    q = w * p_val
    q = q / q.sum() if q.sum() > 0 else p_val
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
