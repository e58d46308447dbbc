import numpy as np
import pytest

from batchml.stats import PartitionStats, scale_temperature

PROBS = np.array([[0.72, 0.18, 0.1], [0.1, 0.82, 0.08], [0.3, 0.28, 0.42], [0.62, 0.28, 0.1]])
LABELS = np.array([0, 2, 2, -1])  # the last row is unlabelled


def test_counts_confusion_and_sums_by_hand():
    s = PartitionStats.from_predictions(PROBS, LABELS)
    assert (s.rows, s.labelled, s.correct) == (4, 3, 2)
    assert s.predicted_counts.tolist() == [2, 1, 1]
    assert s.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    assert np.allclose(s.prob_sums, [1.74, 1.56, 0.7])
    assert np.isclose(s.confidence_sum, 0.72 + 0.82 + 0.42 + 0.62)
    assert np.flatnonzero(s.confidence_hist).tolist() == [8, 12, 14, 16]  # bins of width 0.05


def test_partitions_add_up_exactly_to_the_whole():
    whole = PartitionStats.from_predictions(PROBS, LABELS, temperature=2.0)
    parts = [PartitionStats.from_predictions(PROBS[i : i + 2], LABELS[i : i + 2], temperature=2.0) for i in (0, 2)]
    total, whole = PartitionStats.total(parts, 3).to_dict(), whole.to_dict()
    for key in ("rows", "errors", "labelled", "correct", "predicted_counts", "confusion", "confidence_hist"):
        assert total[key] == whole[key], key
    for key in ("prob_sums", "confidence_sum", "calibrated_confidence_sum"):
        assert np.allclose(total[key], whole[key]), key


def test_json_round_trip_keeps_every_field():
    s = PartitionStats.from_predictions(PROBS, LABELS, errors=3)
    assert PartitionStats.from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_temperature_above_one_softens_probabilities():
    soft = scale_temperature(PROBS, 2.0)
    assert np.allclose(soft.sum(axis=1), 1)
    assert (soft.max(axis=1) < PROBS.max(axis=1)).all()


def test_temperature_fit_softens_an_overconfident_model():
    from batchml.train.calibration import fit_temperature, nll

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    right = rng.random(3000) < 0.6  # 60% accurate, but always 95% sure
    predicted = np.where(right, labels, (labels + 1) % 3)
    probs = np.full((3000, 3), 0.025)
    probs[np.arange(3000), predicted] = 0.95
    t = fit_temperature(probs, labels)
    assert t > 1.5
    calibrated = scale_temperature(probs, t)
    assert nll(calibrated, labels) < nll(probs, labels)
    assert calibrated.max(axis=1).mean() == pytest.approx(0.6, abs=0.03)  # confidence now matches accuracy
