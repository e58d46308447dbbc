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


def test_score_and_class_probability_histograms_add_up_exactly():
    whole = PartitionStats.from_predictions(PROBS, LABELS, temperature=1.5)
    parts = [PartitionStats.from_predictions(PROBS[i : i + 2], LABELS[i : i + 2], temperature=1.5) for i in (0, 2)]
    total = PartitionStats.total(parts, 3)
    assert total.score_hist.tolist() == whole.score_hist.tolist() and whole.score_hist.sum() == 4
    assert total.class_prob_hist.tolist() == whole.class_prob_hist.tolist()
    assert whole.class_prob_hist.sum(axis=1).tolist() == [4, 4, 4]
    assert total.has("score_hist") and total.has("class_prob_hist")


def test_old_stats_records_without_the_new_histograms_still_read():
    new = PartitionStats.from_predictions(PROBS, LABELS)
    old = {k: v for k, v in new.to_dict().items() if k not in ("score_hist", "class_prob_hist")}
    read = PartitionStats.from_dict(old)
    assert read.rows == 4 and not read.has("score_hist")
    assert not (read + new).has("score_hist")  # a sum with an old part lacks the histogram
    nan_row = {**old, "score_hist": float("nan"), "class_prob_hist": None}  # as pandas reads old rows
    assert not PartitionStats.from_dict(nan_row).has("class_prob_hist")


def test_confidence_score_is_one_when_certain_and_zero_when_uniform():
    from batchml.stats import confidence_score

    assert confidence_score(np.array([[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3]])) == pytest.approx([1, 0], abs=1e-6)
