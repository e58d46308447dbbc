"""Mergeable per-partition statistics: everything monitoring needs, summed exactly.

Counts are integers and sums are float64, so folding partitions in any order gives
the same totals; monitoring and the dashboard never rescan predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from batchml.records import is_absent

CONFIDENCE_BINS = 20  # histogram of the top probability over [0, 1]
# histogram of the ATC score (see ``confidence_score``) over [0, 1]: fine enough that the share
# above any threshold, interpolated inside one bin, is off by far less than a point
SCORE_BINS = 1000
# per-class probability bins, fine near 0 and 1 where calibrated probabilities crowd
PROB_EDGES = np.array([0.0, 1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                       0.97, 0.99, 0.997, 0.999, 1.0])
# fields added after the first release: a record without them reads as zeros, and a sum whose
# histogram does not count every row is treated as lacking that histogram
OPTIONAL = ("score_hist", "class_prob_hist", "cell_counts", "cell_prob_sums")


@dataclass(frozen=True)
class BiasCorrection:
    """Bias-corrected temperature scaling (BCTS; Alexandari et al. 2020): softmax(log p / T + b),
    fitted on the validation split (``train.calibration.fit_bcts``); the card keeps it as
    ``calibration.bcts``. MLLS/EM needs probabilities calibrated class by class, which one
    temperature alone does not give."""

    temperature: float
    bias: tuple[float, ...]  # (K,) added to the scaled log-probabilities

    def apply(self, probs: np.ndarray) -> np.ndarray:
        # softmax(z + b) is softmax(z) reweighted by exp(b)
        weighted = scale_temperature(probs, self.temperature) * np.exp(np.asarray(self.bias))
        return weighted / weighted.sum(axis=1, keepdims=True)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "bias": list(self.bias)}

    @classmethod
    def from_dict(cls, d: dict | None) -> BiasCorrection | None:
        """None for cards trained before it."""
        return cls(float(d["temperature"]), tuple(float(b) for b in d["bias"])) if d else None


@dataclass
class PartitionStats:
    num_classes: int
    rows: int = 0  # prediction rows
    errors: int = 0  # images that could not be decoded (error rows)
    labelled: int = 0
    correct: int = 0
    predicted_counts: np.ndarray = field(default=None)  # (K,) rows predicted as each class
    confusion: np.ndarray = field(default=None)  # (K, K) labelled rows: true x predicted
    prob_sums: np.ndarray = field(default=None)  # (K,) summed class probabilities
    confidence_hist: np.ndarray = field(default=None)  # (CONFIDENCE_BINS,) of top probability
    confidence_sum: float = 0.0  # summed top probability
    calibrated_confidence_sum: float = 0.0  # summed top probability after temperature scaling
    score_hist: np.ndarray = field(default=None)  # (SCORE_BINS,) of the calibrated ATC score
    class_prob_hist: np.ndarray = field(default=None)  # (K, len(PROB_EDGES) - 1) calibrated probabilities
    # rows grouped into cells by (predicted class, CONFIDENCE_BINS bin of the top probability), after
    # temperature and class bias: each cell's row count and summed probability vector, from which
    # MLLS/EM estimates class priors (monitoring/label_shift.py) without the rows
    cell_counts: np.ndarray = field(default=None)  # (K, CONFIDENCE_BINS)
    cell_prob_sums: np.ndarray = field(default=None)  # (K, CONFIDENCE_BINS, K)

    def __post_init__(self) -> None:
        k = self.num_classes
        self.predicted_counts = _array(self.predicted_counts, (k,), np.int64)
        self.confusion = _array(self.confusion, (k, k), np.int64)
        self.prob_sums = _array(self.prob_sums, (k,), np.float64)
        self.confidence_hist = _array(self.confidence_hist, (CONFIDENCE_BINS,), np.int64)
        self.score_hist = _array(self.score_hist, (SCORE_BINS,), np.int64)
        self.class_prob_hist = _array(self.class_prob_hist, (k, len(PROB_EDGES) - 1), np.int64)
        self.cell_counts = _array(self.cell_counts, (k, CONFIDENCE_BINS), np.int64)
        self.cell_prob_sums = _array(self.cell_prob_sums, (k, CONFIDENCE_BINS, k), np.float64)

    @classmethod
    def from_predictions(
        cls, probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0, errors: int = 0,
        bcts: BiasCorrection | None = None,
    ) -> PartitionStats:
        """``probs`` (N, K) class probabilities; ``labels`` (N,) with -1 where unknown; ``temperature``
        the card's calibration, and ``bcts`` its bias-corrected one, for the cells alone (without it the
        cells hold the temperature-scaled probabilities)."""
        n, k = probs.shape
        predicted = probs.argmax(axis=1)
        top = probs.max(axis=1)
        known = labels >= 0
        calibrated = scale_temperature(probs, temperature)
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (labels[known], predicted[known]), 1)
        corrected = bcts.apply(probs) if bcts else calibrated
        cell_counts, cell_prob_sums = cells(corrected)
        return cls(
            num_classes=k,
            rows=n,
            errors=errors,
            labelled=int(known.sum()),
            correct=int((predicted[known] == labels[known]).sum()),
            predicted_counts=np.bincount(predicted, minlength=k),
            confusion=confusion,
            prob_sums=probs.sum(axis=0, dtype=np.float64),
            confidence_hist=np.histogram(top, bins=CONFIDENCE_BINS, range=(0.0, 1.0))[0],
            confidence_sum=float(top.sum(dtype=np.float64)),
            calibrated_confidence_sum=float(calibrated.max(axis=1).sum(dtype=np.float64)),
            score_hist=score_histogram(confidence_score(calibrated)),
            class_prob_hist=np.stack([np.histogram(np.clip(calibrated[:, c], 0, 1), PROB_EDGES)[0]
                                      for c in range(k)]),
            cell_counts=cell_counts,
            cell_prob_sums=cell_prob_sums,
        )

    def has(self, name: str) -> bool:
        """Whether an optional histogram counts every row (False where some part predates it)."""
        if name == "cell_prob_sums":  # summed probabilities: complete where the counts are
            name = "cell_counts"
        hist = getattr(self, name)
        return self.rows > 0 and int(hist.sum()) == self.rows * (self.num_classes if name == "class_prob_hist" else 1)

    def __add__(self, other: PartitionStats) -> PartitionStats:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot add stats of {self.num_classes} and {other.num_classes} classes")
        return PartitionStats(
            self.num_classes,
            *(getattr(self, f) + getattr(other, f) for f in _SUMMED),
        )

    def to_dict(self) -> dict:
        return {"num_classes": self.num_classes,
                **{f: _plain(getattr(self, f)) for f in _SUMMED}}

    @classmethod
    def from_dict(cls, d: dict) -> PartitionStats:
        return cls(d["num_classes"], *(_plain(d[f]) if f not in OPTIONAL else _present(d.get(f)) for f in _SUMMED))

    @classmethod
    def total(cls, parts: list[PartitionStats], num_classes: int) -> PartitionStats:
        out = cls(num_classes)
        for p in parts:
            out = out + p
        return out


_SUMMED = ("rows", "errors", "labelled", "correct", "predicted_counts", "confusion",
           "prob_sums", "confidence_hist", "confidence_sum", "calibrated_confidence_sum", *OPTIONAL)


def confidence_score(probs: np.ndarray) -> np.ndarray:
    """Negative entropy scaled to [0, 1] (1: certain, 0: uniform): the ATC score of Garg et al. 2022,
    who found it tracks accuracy under shift better than the top probability."""
    k = probs.shape[1]
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return np.clip(1.0 + (p * np.log(p)).sum(axis=1) / np.log(k), 0.0, 1.0)


def cells(probs: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by (predicted class, ``CONFIDENCE_BINS`` bin of the top probability): each cell's
    row count (K, bins), integer, or the summed ``weights`` (N,) if given, and its summed
    probability vectors (K, bins, K), weighted alike."""
    k = probs.shape[1]
    cell = (probs.argmax(axis=1), _bin(probs.max(axis=1), CONFIDENCE_BINS))
    counts = np.zeros((k, CONFIDENCE_BINS), np.int64 if weights is None else np.float64)
    np.add.at(counts, cell, 1 if weights is None else weights)
    sums = np.zeros((k, CONFIDENCE_BINS, k))
    np.add.at(sums, cell, probs if weights is None else probs * weights[:, None])
    return counts, sums


def _bin(values: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each value in [0, 1] among ``bins`` equal bins (1.0 falls in the last)."""
    return np.clip(np.nan_to_num(values * bins).astype(np.int64), 0, bins - 1)  # NaN rows: bin 0


def score_histogram(scores: np.ndarray) -> np.ndarray:
    return np.histogram(scores, bins=SCORE_BINS, range=(0.0, 1.0))[0]


def scale_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax(log p / T): temperature scaling applied to probabilities."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _array(value, shape: tuple, dtype) -> np.ndarray:
    out = np.zeros(shape, dtype) if value is None else np.asarray(value, dtype)
    if out.shape != shape:
        raise ValueError(f"expected shape {shape}, got {out.shape}")
    return out


def _present(value):
    """An optional field as read back: missing, None, or the NaN pandas fills into old rows are absent."""
    return None if is_absent(value) else _plain(value)


def _plain(value):
    """JSON-ready: arrays (also the arrays of arrays pandas makes of list columns) to lists."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    return value
