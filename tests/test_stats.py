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


def _health(n: int, hashes: list[int]):
    """Input health of ``n`` rows with these content hashes (properties spread over the bins)."""
    from batchml.data.health import PROPERTIES, InputHealth

    values = np.linspace(0, 1, n * len(PROPERTIES)).reshape(n, len(PROPERTIES)) * [32, 32, 1, 900, 1, 0.4, 1, 0.5,
                                                                                     3000, 0.1, 0.4, 2]
    zeros = np.zeros(n, np.int64)
    return InputHealth(values, zeros, zeros + 2, np.array([0, 6, 0, 0][:n]), zeros,
                       np.array(hashes, np.uint64), np.arange(n, dtype=np.uint64))


NOVELTY = np.array([0.3, 1.7, 2.5, 0.9])  # rows 1 and 2 novel


def test_health_duplicates_and_novelty_add_up_exactly_to_the_whole():
    health = _health(4, [11, 12, 13, 14])
    whole = PartitionStats.from_predictions(PROBS, LABELS, health=health, novelty=NOVELTY)
    parts = [PartitionStats.from_predictions(PROBS[i:i + 2], LABELS[i:i + 2], health=health.take(slice(i, i + 2)),
                                             novelty=NOVELTY[i:i + 2]) for i in (0, 2)]
    total = PartitionStats.total(parts, 3)
    for key in ("health_hist", "mode_counts", "channel_counts", "orientation_counts", "format_counts",
                "duplicate_rows", "predicted_counts_unique", "novelty_hist", "novel_rows", "novel_predicted",
                "novel_cell_counts", "novel_labelled", "novel_correct"):
        assert total.to_dict()[key] == whole.to_dict()[key], key
    assert np.isclose(total.novel_confidence_sum, whole.novel_confidence_sum)
    for key in ("health_hist", "mode_counts", "orientation_counts", "predicted_counts_unique", "novelty_hist",
                "novel_rows"):
        assert whole.has(key) and total.has(key), key
    assert whole.orientation_counts.tolist() == [3, 0, 0, 0, 0, 0, 1, 0, 0]
    assert whole.channel_counts.tolist() == [0, 0, 4, 0]


def test_novel_rows_are_counted_by_predicted_class_and_label():
    s = PartitionStats.from_predictions(PROBS, LABELS, novelty=NOVELTY)
    assert s.novel_rows == 2 and s.novel_predicted.tolist() == [0, 1, 1]  # rows 1 and 2 predict classes 1, 2
    assert (s.novel_labelled, s.novel_correct) == (2, 1)  # row 1 (label 2) wrong, row 2 (label 2) right
    assert s.novel_cell_counts.sum() == 2 and s.novelty_hist.sum() == 4
    assert s.novel_confidence_sum == pytest.approx(0.82 + 0.42)


def test_repeated_bytes_count_as_duplicates_and_once_in_the_unique_mix():
    s = PartitionStats.from_predictions(PROBS, LABELS, health=_health(4, [5, 9, 5, 5]))
    assert s.duplicate_rows == 2
    assert s.predicted_counts_unique.tolist() == [1, 1, 0]  # rows 0 and 1: classes 0 and 1
    assert s.has("predicted_counts_unique")


def test_stats_without_health_or_novelty_read_as_absent():
    plain = PartitionStats.from_predictions(PROBS, LABELS)
    for key in ("health_hist", "mode_counts", "predicted_counts_unique", "duplicate_rows", "novelty_hist",
                "novel_rows", "novel_predicted"):
        assert not plain.has(key), key
    older = {k: v for k, v in plain.to_dict().items() if k not in ("health_hist", "novel_rows", "novelty_hist")}
    read = PartitionStats.from_dict(older)
    assert read.novel_rows == 0 and not read.has("novelty_hist") and read.segments == {}
    with_novelty = PartitionStats.from_predictions(PROBS, LABELS, novelty=NOVELTY)
    assert not (read + with_novelty).has("novelty_hist")  # part of the sum predates it


def test_segments_fold_per_value_and_survive_json():
    def part(rows):
        s = PartitionStats.from_predictions(PROBS[rows], LABELS[rows], novelty=NOVELTY[rows])
        s.segments = {"cam-1": PartitionStats.from_predictions(PROBS[rows][:1], LABELS[rows][:1]),
                      f"cam-{rows.start + 2}": PartitionStats.from_predictions(PROBS[rows][1:], LABELS[rows][1:])}
        return s

    total = PartitionStats.from_dict(PartitionStats.total([part(slice(0, 2)), part(slice(2, 4))], 3).to_dict())
    assert sorted(total.segments) == ["cam-1", "cam-2", "cam-4"]
    assert total.segments["cam-1"].rows == 2 and total.segments["cam-2"].rows == 1
    assert sum(s.rows for s in total.segments.values()) == total.rows == 4
    assert PartitionStats.from_dict(total.to_dict()).to_dict() == total.to_dict()
