"""Accuracy and output shift without labels, from the mergeable score histograms.

ATC (average thresholded confidence; Garg et al., ICLR 2022): on the validation split, find
the score threshold ``t`` at which the share of rows scoring above ``t`` equals the
validation accuracy; on a night, the share above ``t`` estimates its accuracy. The score is
``stats.confidence_score`` (negative entropy of the calibrated probabilities). Unlike average
confidence it is not dragged up by a model that stays sure of itself on corrupted images.
Published error over CIFAR-10-C: 3.9 points for ATC on negative entropy, 11.9 for average
confidence after temperature scaling; this model's figures are in the README's measured
section. ATC is kept beside COT, and alerts where COT cannot be computed.

COT (confidence optimal transport; Lu et al., NeurIPS 2023): the night's error is the cost of
moving its calibrated probability vectors onto one-hot labels drawn in the class mix the model
expects (the validation split's, or what was accepted), at cost 1 - p_j for sending a row to
class j. A model that stays sure of itself on corrupted images but piles its predictions onto a
few classes pays for every row it must move off them, where ATC and average confidence see
only sure rows. The rows come as the cells ``PartitionStats.cell_prob_sums`` keep (predicted
class x top-probability bin, bias-corrected probabilities); rows of a cell move together, which
can only raise the cost, by little for cells this narrow. It assumes the expected mix: a night
whose true mix moved reads lower than it is (and the class-mix alerts say so beside it).
Its error on corrupted and clean nights, beside ATC's and average confidence's, is in the
README's measured section (benchmarks/shift_detection.py).

Output shift (Rabanser et al., 2019): two-sample Kolmogorov-Smirnov tests of tonight's
histograms of the score and of each class's probability against the model's validation
histograms, Bonferroni-corrected over the K + 1 tests. On binned data the KS distance can
only shrink, so the p-values are conservative.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import eye, hstack, kron, vstack
from scipy.stats import kstwobign

from batchml.reference import decode_rows, share_above
from batchml.stats import BiasCorrection, PartitionStats, cells


def atc_accuracy(stats: PartitionStats, threshold: float | None) -> float | None:
    """The ATC estimate of a run's accuracy; None for old cards or stats without the score histogram."""
    if threshold is None or not stats.has("score_hist"):
        return None
    return share_above(stats.score_hist, threshold)


MIN_COT_ROWS = 2000  # fewer rows: the night's own class-mix noise reads as transport cost (see below)


def cot_accuracy(stats: PartitionStats, expected_mix: np.ndarray | None,
                 calibrated_mix: np.ndarray | None = None) -> float | None:
    """The COT estimate of a run's accuracy against ``expected_mix`` (K,) class shares; None for stats
    without cells, without a mix to expect, with non-finite probabilities, or with fewer than
    ``MIN_COT_ROWS`` rows: the sampling noise of a small night's class mix reads as transport cost
    (on a simulated calibrated 10-class model, clean nights raised ``expected_accuracy_drop`` on
    52% of 200-row nights, 20% at 500 and 5% at 1,000; ATC 8%, 3% and 0%).

    ``calibrated_mix`` is the class mix the probabilities are calibrated under (the validation
    split's). Where the expected mix differs, each cell's probabilities are first reweighted by
    expected / calibrated (the posterior under the new priors, Saerens et al. 2002): else an accepted
    new mix would read as errors every night."""
    if expected_mix is None or not stats.has("cell_counts") or stats.rows < MIN_COT_ROWS:
        return None
    return _cot(stats.cell_counts, stats.cell_prob_sums, np.asarray(expected_mix, dtype=np.float64),
                None if calibrated_mix is None else np.asarray(calibrated_mix, dtype=np.float64))


def _cot(cell_counts: np.ndarray, cell_prob_sums: np.ndarray, mix: np.ndarray,
         calibrated: np.ndarray | None) -> float | None:
    k = len(mix)
    counts = cell_counts.reshape(-1).astype(np.float64)
    keep = counts > 0
    means = cell_prob_sums.reshape(-1, k)[keep] / counts[keep, None]  # (cells, K)
    if calibrated is not None:
        means = means * _ratio(mix, calibrated)
        means /= np.maximum(means.sum(axis=1, keepdims=True), 1e-300)
    if not (np.isfinite(means).all() and np.isfinite(mix).all() and mix.sum() > 0):
        return None
    cells = len(means)
    # plan[c, j] >= 0: the share of rows moved from cell c to class j; each cell sends out its share
    # of the rows, each class receives its expected share
    rows_out = kron(eye(cells), np.ones((1, k)))
    class_in = hstack([eye(k)] * cells)
    result = linprog((1.0 - means).reshape(-1), A_eq=vstack([rows_out, class_in]).tocsr(),
                     b_eq=np.concatenate([counts[keep] / counts.sum(), mix / mix.sum()]),
                     bounds=(0, None), method="highs")
    if not result.success:  # cannot happen for finite shares that sum to one; be loud if it does
        raise RuntimeError(f"COT transport problem failed: {result.message}")
    # 1 - cost reads each row as right with its largest probability; a row stays predicted as its
    # cell's class, whose reweighted probability may no longer be the largest: charge the difference
    predicted = np.repeat(np.arange(k), counts.size // k)[keep]  # cells are (class, bin), class-major
    gap = means.max(axis=1) - means[np.arange(cells), predicted]
    return float(1.0 - result.fun - counts[keep] @ gap / counts.sum())


@dataclass(frozen=True, eq=False)
class CotReference:
    """What COT needs beside a run's cells, from the card and the baseline: the mix to expect, the
    mix the probabilities are calibrated under, and the card's validation rows and BCTS. COT's bias
    depends on the mix (lower at a skewed mix than at the validation mix); the validation rows,
    reweighted to the expected mix, measure how much more it is there than at the validation mix,
    and that difference is taken out. The level itself is not re-anchored on the validation rows:
    that read the benchmark's clean nights lower (README, measured section)."""

    expected_mix: np.ndarray
    calibrated_mix: np.ndarray
    validation_rows: dict | None = None
    bcts: BiasCorrection | None = None

    def accuracy(self, stats: PartitionStats) -> float | None:
        """COT of ``stats``; a fully labelled run is measured against its own labels' mix."""
        mix = self.expected_mix
        if stats.labelled and stats.labelled == stats.rows:
            mix = stats.confusion.sum(axis=1) / stats.labelled
        estimate = cot_accuracy(stats, mix, self.calibrated_mix)
        if estimate is None or self.validation_rows is None or self.bcts is None:
            return estimate
        at_mix, at_calibration = (self._offset(m) for m in (mix, self.calibrated_mix))
        if at_mix is None or at_calibration is None:
            return estimate
        return float(np.clip(estimate + at_mix - at_calibration, 0.0, 1.0))

    def _offset(self, mix: np.ndarray) -> float | None:
        rows = self.validation_rows
        return validation_offset(rows["probabilities"], rows["labels"], rows["rows"], rows["classes"], self.bcts,
                                 tuple(np.round(mix / mix.sum(), 6)), tuple(np.round(self.calibrated_mix, 6)))


@lru_cache(maxsize=64)
def validation_offset(probabilities: str, labels: str, rows: int, classes: int, bcts: BiasCorrection,
                      mix: tuple[float, ...], calibrated: tuple[float, ...]) -> float | None:
    """Accuracy minus COT on the validation rows, each weighted by expected / calibrated share of its
    true class (the split as if drawn in the expected mix); cached per model and mix."""
    probs, y = decode_rows({"rows": rows, "classes": classes, "probabilities": probabilities, "labels": labels})
    weights = _ratio(np.asarray(mix), np.asarray(calibrated))[y]
    if weights.sum() == 0:
        return None
    counts, sums = cells(bcts.apply(probs), weights)
    cot = _cot(counts, sums, np.asarray(mix), np.asarray(calibrated))
    accuracy = float(weights @ (probs.argmax(axis=1) == y) / weights.sum())
    return None if cot is None else accuracy - cot


def _ratio(mix: np.ndarray, calibrated: np.ndarray) -> np.ndarray:
    """expected / calibrated share per class (0 where the calibrated share is 0)."""
    mix, calibrated = mix / mix.sum(), calibrated / calibrated.sum()
    return np.divide(mix, calibrated, out=np.zeros_like(mix), where=calibrated > 0)


def ks_binned(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample KS distance and asymptotic p-value between two histograms on the same bins."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n, m = a.sum(), b.sum()
    if n == 0 or m == 0:
        return 0.0, 1.0
    d = float(np.abs(np.cumsum(a) / n - np.cumsum(b) / m).max())
    return d, float(kstwobign.sf(d * np.sqrt(n * m / (n + m))))


def output_shift(stats: PartitionStats, reference: dict | None) -> dict:
    """KS tests of the score and per-class probability histograms against the validation ones.

    ``output_p_value`` is the smallest p-value times the number of tests (Bonferroni, capped at
    1); ``output_ks`` the KS distance of that test; ``output_worst`` which histogram it was."""
    absent = {"output_p_value": None, "output_ks": None, "output_worst": None}
    if not reference or "score_hist" not in reference or not stats.has("score_hist") \
            or not stats.has("class_prob_hist"):
        return absent
    tests = {"score": ks_binned(stats.score_hist, reference["score_hist"])}
    for c, (tonight, ref) in enumerate(zip(stats.class_prob_hist, reference["class_prob_hist"], strict=True)):
        tests[f"class {c}"] = ks_binned(tonight, ref)
    worst = min(tests, key=lambda name: tests[name][1])
    d, p = tests[worst]
    return {"output_p_value": min(1.0, p * len(tests)), "output_ks": d, "output_worst": worst}
