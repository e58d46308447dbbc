"""Mergeable per-partition statistics: everything monitoring needs, summed exactly.

Counts are integers and sums are float64, so folding partitions in any order gives
the same totals; monitoring and the dashboard never rescan predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from batchml.data.health import CHANNELS, FORMATS, HEALTH_BINS, MODES, ORIENTATIONS, PROPERTIES, InputHealth
from batchml.records import is_absent

CONFIDENCE_BINS = 20  # histogram of the top probability over [0, 1]
# histogram of the ATC score (see ``confidence_score``) over [0, 1]: fine enough that the share
# above any threshold, interpolated inside one bin, is off by far less than a point
SCORE_BINS = 1000
# per-class probability bins, fine near 0 and 1 where calibrated probabilities crowd
PROB_EDGES = np.array([0.0, 1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                       0.97, 0.99, 0.997, 0.999, 1.0])
# the novelty score (distance to the training features over the card's threshold: 1.0 is the
# validation split's 95th percentile) in bins of 0.1 up to 4, the last bin open; 1.0 is an edge
NOVELTY_EDGES = np.linspace(0.0, 4.0, 41)
NOVELTY_BINS = len(NOVELTY_EDGES) - 1
# fields added after the first release: a record without them reads as zeros, and a sum whose
# histogram does not count every row is treated as lacking that histogram (``has``)
OPTIONAL = ("score_hist", "class_prob_hist", "cell_counts", "cell_prob_sums",
            # input health (batchml.data.health) and duplicates
            "health_hist", "mode_counts", "channel_counts", "orientation_counts", "format_counts",
            "duplicate_rows", "predicted_counts_unique",
            # novelty (batchml.train.novelty)
            "novelty_hist", "novel_rows", "novel_predicted", "novel_cell_counts", "novel_confidence_sum",
            "novel_labelled", "novel_correct",
            # late labels (batchml.labels): the labelled rows by confidence bin, to reweight a sample
            # that was not drawn at random
            "labelled_hist", "correct_hist")
# the fields a label changes: what a batch of late labels adds to a run's statistics (batchml.labels)
LABEL_FIELDS = ("labelled", "correct", "confusion", "novel_labelled", "novel_correct", "labelled_hist",
                "correct_hist")


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
    # input health of the prediction rows, on the fixed bins of ``batchml.data.health``
    health_hist: np.ndarray = field(default=None)  # (len(PROPERTIES), HEALTH_BINS) per property
    mode_counts: np.ndarray = field(default=None)  # (len(MODES),) PIL mode as received
    channel_counts: np.ndarray = field(default=None)  # (len(CHANNELS),) 1, 2, 3, 4 channels as received
    orientation_counts: np.ndarray = field(default=None)  # (ORIENTATIONS,) EXIF tag; [0]: none
    format_counts: np.ndarray = field(default=None)  # (len(FORMATS),) JPEG, PNG, other
    # exact duplicates by content hash, within the partition (across partitions and nights: the
    # run's hashes files, ``layout.run_hashes``)
    duplicate_rows: int = 0  # rows whose bytes repeat an earlier row's
    predicted_counts_unique: np.ndarray = field(default=None)  # (K,) predicted_counts over distinct bytes
    # novelty (``batchml.train.novelty``): rows scored against the card's novelty reference
    novelty_hist: np.ndarray = field(default=None)  # (NOVELTY_BINS,) of the novelty score
    novel_rows: int = 0  # rows whose novelty is above 1 (the validation split's 95th percentile)
    novel_predicted: np.ndarray = field(default=None)  # (K,) novel rows per predicted class
    # novel rows in the cells of ``cell_counts``: the label-free estimates can take them out
    novel_cell_counts: np.ndarray = field(default=None)  # (K, CONFIDENCE_BINS)
    novel_confidence_sum: float = 0.0  # their summed calibrated top probability
    novel_labelled: int = 0  # labelled novel rows
    novel_correct: int = 0  # of which predicted right
    # the same statistics per segment value (``batchml.score.segments``): the top values by rows in
    # the partition and ``OTHER_SEGMENT``; each folds like the whole, without segments of its own
    segments: dict[str, PartitionStats] = field(default_factory=dict)
    # the labelled rows, and those predicted right, by bin of the top probability (the bins of
    # ``confidence_hist``): a sample drawn by confidence is reweighted to the night's rows (``batchml.labels``)
    labelled_hist: np.ndarray = field(default=None)  # (CONFIDENCE_BINS,)
    correct_hist: np.ndarray = field(default=None)  # (CONFIDENCE_BINS,)

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
        self.health_hist = _array(self.health_hist, (len(PROPERTIES), HEALTH_BINS), np.int64)
        self.mode_counts = _array(self.mode_counts, (len(MODES),), np.int64)
        self.channel_counts = _array(self.channel_counts, (len(CHANNELS),), np.int64)
        self.orientation_counts = _array(self.orientation_counts, (ORIENTATIONS,), np.int64)
        self.format_counts = _array(self.format_counts, (len(FORMATS),), np.int64)
        self.predicted_counts_unique = _array(self.predicted_counts_unique, (k,), np.int64)
        self.novelty_hist = _array(self.novelty_hist, (NOVELTY_BINS,), np.int64)
        self.novel_predicted = _array(self.novel_predicted, (k,), np.int64)
        self.novel_cell_counts = _array(self.novel_cell_counts, (k, CONFIDENCE_BINS), np.int64)
        self.labelled_hist = _array(self.labelled_hist, (CONFIDENCE_BINS,), np.int64)
        self.correct_hist = _array(self.correct_hist, (CONFIDENCE_BINS,), np.int64)
        for name in ("duplicate_rows", "novel_rows", "novel_labelled", "novel_correct"):
            setattr(self, name, int(getattr(self, name) or 0))
        self.novel_confidence_sum = float(self.novel_confidence_sum or 0.0)
        self.segments = {str(v): s if isinstance(s, PartitionStats) else PartitionStats.from_dict(
            {"num_classes": k, **s}) for v, s in (self.segments or {}).items()}

    @classmethod
    def from_predictions(
        cls, probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0, errors: int = 0,
        bcts: BiasCorrection | None = None, health: InputHealth | None = None, novelty: np.ndarray | None = None,
    ) -> PartitionStats:
        """``probs`` (N, K) class probabilities; ``labels`` (N,) with -1 where unknown; ``temperature``
        the card's calibration, and ``bcts`` its bias-corrected one, for the cells alone (without it the
        cells hold the temperature-scaled probabilities). ``health`` (N rows) and ``novelty`` (N,):
        where scoring measured them; without them their fields stay zero (absent)."""
        n, k = probs.shape
        predicted = probs.argmax(axis=1)
        top = probs.max(axis=1)
        known = labels >= 0
        calibrated = scale_temperature(probs, temperature)
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (labels[known], predicted[known]), 1)
        corrected = bcts.apply(probs) if bcts else calibrated
        cell_counts, cell_prob_sums = cells(corrected)
        extra = _health_fields(health, predicted, k) if health is not None else {}
        if novelty is not None:
            extra |= _novelty_fields(novelty, predicted, labels, corrected, calibrated.max(axis=1), k)
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
            **extra,
            **labelled_by_confidence(top, predicted, labels),
        )

    def has(self, name: str) -> bool:
        """Whether an optional field counts every row (False where some part predates it, or was
        scored without it: a novelty field without a novelty reference, health with --no-diagnostics)."""
        name = _COMPLETE_WITH.get(name, name)
        if self.rows <= 0:
            return False
        if name == "predicted_counts_unique":  # every row is distinct or a repeat
            return int(self.predicted_counts_unique.sum()) + self.duplicate_rows == self.rows
        if name in ("labelled_hist", "correct_hist"):  # they count the labelled rows
            return int(self.labelled_hist.sum()) == self.labelled
        per_row = {"class_prob_hist": self.num_classes, "health_hist": len(PROPERTIES)}.get(name, 1)
        return int(getattr(self, name).sum()) == self.rows * per_row

    def __add__(self, other: PartitionStats) -> PartitionStats:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot add stats of {self.num_classes} and {other.num_classes} classes")
        segments = dict(self.segments)
        for value, part in other.segments.items():
            segments[value] = segments[value] + part if value in segments else part
        return PartitionStats(self.num_classes, **{f: getattr(self, f) + getattr(other, f) for f in _SUMMED},
                              segments=segments)

    def to_dict(self) -> dict:
        out = {"num_classes": self.num_classes, **{f: _plain(getattr(self, f)) for f in _SUMMED}}
        if self.segments:
            out["segments"] = {v: _without_classes(s.to_dict()) for v, s in self.segments.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> PartitionStats:
        values = {f: _plain(d[f]) if f not in OPTIONAL else _present(d.get(f)) for f in _SUMMED}
        return cls(d["num_classes"], **values, segments=_present(d.get("segments")) or {})

    @classmethod
    def total(cls, parts: list[PartitionStats], num_classes: int) -> PartitionStats:
        out = cls(num_classes)
        for p in parts:
            out = out + p
        return out


# a field whose completeness another's shows: summed alongside it, or counted only where it is
_COMPLETE_WITH = {"cell_prob_sums": "cell_counts", "duplicate_rows": "predicted_counts_unique",
                  "mode_counts": "health_hist", "channel_counts": "health_hist", "orientation_counts": "health_hist",
                  "format_counts": "health_hist", "novel_rows": "novelty_hist", "novel_predicted": "novelty_hist",
                  "novel_cell_counts": "novelty_hist", "novel_confidence_sum": "novelty_hist",
                  "novel_labelled": "novelty_hist", "novel_correct": "novelty_hist"}


def _health_fields(health: InputHealth, predicted: np.ndarray, k: int) -> dict:
    """The input-health counts, and the duplicates by content hash within these rows."""
    _, first = np.unique(health.content_hash, return_index=True)
    return {**health.counts(), "duplicate_rows": len(predicted) - len(first),
            "predicted_counts_unique": np.bincount(predicted[first], minlength=k)}


def _novelty_fields(novelty: np.ndarray, predicted: np.ndarray, labels: np.ndarray, corrected: np.ndarray,
                    calibrated_top: np.ndarray, k: int) -> dict:
    """The novelty histogram, and the novel rows by predicted class, cell and label."""
    novel = novelty > 1.0
    bins = np.clip(np.searchsorted(NOVELTY_EDGES, np.nan_to_num(novelty), side="right") - 1, 0, NOVELTY_BINS - 1)
    known = novel & (labels >= 0)
    return {
        "novelty_hist": np.bincount(bins, minlength=NOVELTY_BINS),
        "novel_rows": int(novel.sum()),
        "novel_predicted": np.bincount(predicted[novel], minlength=k),
        "novel_cell_counts": cells(corrected[novel])[0] if novel.any() else None,
        "novel_confidence_sum": float(calibrated_top[novel].sum(dtype=np.float64)),
        "novel_labelled": int(known.sum()),
        "novel_correct": int((predicted[known] == labels[known]).sum()),
    }


def labelled_by_confidence(top: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> dict:
    """``labelled_hist`` and ``correct_hist`` of rows with top probability ``top`` (the bins of
    ``confidence_hist``, computed alike so that a row falls in the same bin), ``labels`` -1 where unknown."""
    known = labels >= 0
    right = known & (predicted == labels)
    return {"labelled_hist": np.histogram(top[known], bins=CONFIDENCE_BINS, range=(0.0, 1.0))[0],
            "correct_hist": np.histogram(top[right], bins=CONFIDENCE_BINS, range=(0.0, 1.0))[0]}


def _without_classes(d: dict) -> dict:
    d.pop("num_classes", None)
    return d


_SUMMED = ("rows", "errors", "labelled", "correct", "predicted_counts", "confusion",
           "prob_sums", "confidence_hist", "confidence_sum", "calibrated_confidence_sum", *OPTIONAL)
OTHER_SEGMENT = "(other)"  # the segment of the values outside a partition's top values
MISSING_SEGMENT = "(none)"  # the segment of rows without a value (null, or a path the pattern missed)


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
