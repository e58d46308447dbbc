import math

import numpy as np
import pytest
from scipy.stats import chi2 as chi2_dist

from batchml.monitoring.shift import class_shift, wilson_interval


def test_wilson_interval_matches_hand_computation():
    # 8 of 10: centre (0.8 + 1.92/10) / 1.384, half-width 1.96 * sqrt(0.016 + 0.00096) / 1.384
    low, high = wilson_interval(8, 10, z=1.96)
    centre = (0.8 + 1.96**2 / 20) / (1 + 1.96**2 / 10)
    half = 1.96 * math.sqrt(0.016 + 1.96**2 / 400) / (1 + 1.96**2 / 10)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 10)[0] == 0.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_identical_class_mix_shows_no_shift():
    s = class_shift(np.array([10, 20, 30]), np.array([10, 20, 30]))
    assert s["chi2"] == pytest.approx(0) and s["p_value"] == pytest.approx(1)
    assert s["js_distance"] == pytest.approx(0, abs=1e-7)


def test_two_by_two_shift_by_hand():
    # table [[30, 70], [50, 50]]: expected [[40, 60], [40, 60]]
    s = class_shift(np.array([30, 70]), np.array([50, 50]))
    chi2 = 2 * (10**2 / 40) + 2 * (10**2 / 60)
    assert s["chi2"] == pytest.approx(chi2)
    assert s["p_value"] == pytest.approx(chi2_dist.sf(chi2, 1))
    assert s["share_deviation"] == pytest.approx([-0.2, 0.2])
    m = np.array([0.4, 0.6])
    kl = lambda p: float(np.sum(p * np.log2(p / m)))  # noqa: E731
    assert s["js_distance"] == pytest.approx(math.sqrt((kl(np.array([0.3, 0.7])) + kl(np.array([0.5, 0.5]))) / 2))


def test_classes_absent_from_both_sides_are_ignored():
    assert class_shift(np.array([5, 0, 5]), np.array([5, 0, 5]))["p_value"] == pytest.approx(1)


# -- per-class metrics ---------------------------------------------------------------------------


def test_per_class_metrics_by_hand():
    from batchml.monitoring.classes import per_class_metrics, row_normalised

    cm = [[5, 1, 0], [2, 3, 0], [0, 0, 0]]  # class 2 never seen nor predicted
    m = per_class_metrics(cm)
    assert m["precision"][:2] == pytest.approx([5 / 7, 3 / 4])
    assert m["recall"][:2] == pytest.approx([5 / 6, 3 / 5])
    assert m["f1"][0] == pytest.approx(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6))
    assert m["fpr"][:2] == pytest.approx([2 / 5, 1 / 6])  # class 0: fp 2 among 5 true non-zeros
    assert m["fnr"][:2] == pytest.approx([1 / 6, 2 / 5])
    assert m["precision"][2] is None and m["recall"][2] is None and m["fpr"][2] == 0.0
    assert m["support"] == [6, 5, 0]
    assert row_normalised(cm)[1].tolist() == pytest.approx([0.4, 0.6, 0])


# -- label shift ----------------------------------------------------------------------------------


def test_bbse_recovers_priors_exactly_from_exact_statistics():
    from batchml.monitoring.label_shift import estimate_priors

    joint = np.array([[40, 8, 2], [5, 30, 5], [2, 3, 5]], float)  # true x predicted, validation
    p = joint.sum(axis=1) / joint.sum()
    q = np.array([0.2, 0.3, 0.5])
    conditional = joint / joint.sum(axis=1, keepdims=True)  # P(predicted | true)
    mu = q @ conditional  # predicted distribution under the new priors
    est = estimate_priors(joint, mu, n=10_000)
    assert est["priors"] == pytest.approx(q.tolist())
    assert all(lo <= t <= hi for lo, t, hi in zip(est["priors_low"], q, est["priors_high"], strict=True))
    assert est["well_conditioned"] and est["condition_number"] < 100
    assert not np.allclose(p, q)


def test_bbse_flags_a_singular_confusion_matrix():
    from batchml.monitoring.label_shift import estimate_priors

    joint = np.array([[10, 0, 0], [0, 5, 5], [0, 5, 5]], float)  # classes 1 and 2 indistinguishable
    assert not estimate_priors(joint, np.array([0.4, 0.3, 0.3]), 1000)["well_conditioned"]


def _validation_rows(rng, n, conditional):
    """``n`` validation rows of 3 classes: label uniform, probabilities one noisy row of ``conditional``."""
    labels = rng.integers(0, 3, n)
    draws = rng.gamma(20 * conditional[labels].clip(0.01))  # Dirichlet rows around P(predicted | true)
    return draws / draws.sum(axis=1, keepdims=True), labels


def test_validation_rows_round_trip_through_the_card():
    from batchml.reference import decode_rows, encode_rows

    probs, labels = _validation_rows(np.random.default_rng(0), 50, np.eye(3) * 0.7 + 0.1)
    back, y = decode_rows(json_round_trip(encode_rows(probs, labels)))
    assert y.tolist() == labels.tolist() and np.abs(back - probs).max() < 1e-3  # float16


def json_round_trip(value):
    import json

    return json.loads(json.dumps(value))


def test_bbse_bootstrap_interval_covers_the_truth_and_narrows_with_more_validation_rows():
    from batchml.monitoring.label_shift import bootstrap_priors
    from batchml.reference import encode_rows

    rng = np.random.default_rng(4)
    conditional = np.array([[0.8, 0.15, 0.05], [0.15, 0.7, 0.15], [0.05, 0.25, 0.7]])
    q = np.array([0.2, 0.3, 0.5])
    mu = q @ conditional  # what a run of these priors predicts, on average
    widths = []
    for n_val in (300, 5000):
        rows = encode_rows(*_validation_rows(rng, n_val, conditional))
        low, high = bootstrap_priors(rows, mu, n=100_000)  # a large run: the validation error dominates
        assert all(lo <= t <= hi for lo, t, hi in zip(low, q, high, strict=True))
        widths.append(np.subtract(high, low).mean())
    # the normal approximation ignores the validation matrix's error: the same width for both
    assert widths[0] > 2 * widths[1]


def test_cards_with_validation_rows_get_bootstrap_intervals():
    from batchml.reference import encode_rows
    from batchml.stats import PartitionStats

    probs, labels = _validation_rows(np.random.default_rng(5), 600, np.eye(3) * 0.6 + 0.1)
    joint = np.zeros((3, 3))
    np.add.at(joint, labels, probs)
    card = {"reference": {"accuracy": 0.7, "predicted_counts": [200] * 3},
            "metrics": {"validation": {"prob_confusion": joint.tolist()}}}
    stats = PartitionStats.from_predictions(probs[:300], np.full(300, -1))
    run = {"run_id": "r", "dataset": "d", "model_version": "m/v1", "committed_at": "", "classes": ["a", "b", "c"]}
    old = _build(run, stats, card)
    new = _build(run, stats, {**card, "validation_rows": encode_rows(probs, labels)})
    assert (old.estimated_priors_interval, new.estimated_priors_interval) == ("normal", "bootstrap")
    assert new.estimated_priors == old.estimated_priors
    assert new.estimated_priors_low != old.estimated_priors_low


def _calibrated_rows(rng, priors, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a perfectly calibrated classifier under uniform training priors: x ~ N(mean_y, 1) in
    2-D, probabilities the Bayes posterior, labels drawn from ``priors``."""
    means = np.array([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])
    y = rng.choice(3, n, p=priors)
    x = means[y] + rng.normal(size=(n, 2))
    logits = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(axis=2)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), y


def test_mlls_from_mergeable_cells_recovers_shifted_priors():
    from batchml.monitoring.label_shift import mlls_priors
    from batchml.stats import PartitionStats

    rng = np.random.default_rng(7)
    q = np.array([0.6, 0.3, 0.1])
    parts = [PartitionStats.from_predictions(*_calibrated_rows(rng, q, 10_000)) for _ in range(3)]
    stats = PartitionStats.total(parts, 3)
    estimate = mlls_priors(stats.cell_counts, stats.cell_prob_sums, np.full(3, 1 / 3))
    assert np.abs(estimate - q).sum() < 0.03
    shares = stats.predicted_counts / stats.rows  # the raw mix is far off: the model confuses classes
    assert np.abs(shares - q).sum() > 0.1


def test_bias_corrected_calibration_undoes_a_class_bias_before_the_cells_are_summed():
    from batchml.monitoring.label_shift import mlls_priors
    from batchml.stats import BiasCorrection, PartitionStats
    from batchml.train.calibration import fit_bcts

    rng = np.random.default_rng(8)
    skew = BiasCorrection(0.5, (1.0, 0.0, -1.0))  # over-confident, and favours class 0 over class 2
    probs, y = _calibrated_rows(rng, np.full(3, 1 / 3), 20_000)
    fitted = fit_bcts(skew.apply(probs), y)
    assert fitted.temperature == pytest.approx(2.0, rel=0.05)  # undoes T = 0.5
    np.testing.assert_allclose(fitted.bias, [-0.5, 0.0, 0.5], atol=0.08)  # the bias: -skew / T
    q = np.array([0.2, 0.2, 0.6])
    night = skew.apply(_calibrated_rows(rng, q, 20_000)[0])
    unknown = np.full(len(night), -1)
    for bcts, close in ((fitted, True), (None, False)):
        stats = PartitionStats.from_predictions(night, unknown, bcts=bcts)
        estimate = mlls_priors(stats.cell_counts, stats.cell_prob_sums, np.full(3, 1 / 3))
        assert (np.abs(estimate - q).sum() < 0.05) == close
    assert BiasCorrection.from_dict(fitted.to_dict()) == fitted and BiasCorrection.from_dict(None) is None


def test_stats_written_before_cells_give_no_mlls_estimate():
    from batchml.reference import encode_rows
    from batchml.stats import PartitionStats

    probs, labels = _calibrated_rows(np.random.default_rng(9), np.full(3, 1 / 3), 600)
    joint = np.zeros((3, 3))
    np.add.at(joint, labels, probs)
    card = {"reference": {"accuracy": 0.7, "predicted_counts": [200] * 3}, "calibration": {"temperature": 1.0},
            "metrics": {"validation": {"prob_confusion": joint.tolist()}},
            "validation_rows": encode_rows(probs, labels)}
    run = {"run_id": "r", "dataset": "d", "model_version": "m/v1", "committed_at": "", "classes": ["a", "b", "c"]}
    new = PartitionStats.from_predictions(probs, np.full(600, -1))
    old = PartitionStats.from_dict({k: v for k, v in new.to_dict().items() if not k.startswith("cell_")})
    assert len(_build(run, new, card).mlls_priors) == 3
    assert _build(run, old, card).mlls_priors is None


# -- the nightly baseline --------------------------------------------------------------------------


def test_history_needs_enough_nights():
    from batchml.monitoring.history import MIN_NIGHTS, history_shift

    assert history_shift([np.array([10, 10])] * (MIN_NIGHTS - 1), np.array([10, 10])) is None


def test_history_learns_ordinary_night_to_night_variation():
    from batchml.monitoring.history import history_shift

    rng = np.random.default_rng(0)
    calm = [rng.multinomial(2000, [0.5, 0.3, 0.2]) for _ in range(20)]
    wobbly = [rng.multinomial(2000, rng.dirichlet([50, 30, 20])) for _ in range(20)]  # overdispersed
    tonight = np.array([1100, 540, 360])  # 55% / 27% / 18%
    strict, lenient = history_shift(calm, tonight), history_shift(wobbly, tonight)
    assert strict["history_dispersion"] == pytest.approx(1.0, abs=0.5)
    assert lenient["history_dispersion"] > 3
    assert strict["history_p_value"] < 1e-3 < lenient["history_p_value"]


def test_one_wild_night_cannot_blind_the_baseline():
    from batchml.monitoring.history import history_shift

    rng = np.random.default_rng(1)
    prior = np.full(10, 0.1)
    history = [rng.multinomial(2000, prior) for _ in range(29)]
    history.append(np.array([1500] + [55] * 9 + [5])[:10])  # a blurred night: nearly all one class
    doubled = rng.multinomial(2000, np.r_[0.2, np.full(9, 0.8 / 9)])
    s = history_shift(history, doubled)
    assert s["history_dispersion"] < 1.5
    assert s["history_p_value"] < 1e-6


def test_dispersion_is_floored_and_capped():
    from batchml.monitoring.history import MAX_DISPERSION, dispersion

    rng = np.random.default_rng(2)
    same = [np.array([500, 500])] * 10  # no variation at all
    wild = [rng.multinomial(2000, rng.dirichlet([1, 1])) for _ in range(10)]
    assert dispersion(same) == 1.0 and dispersion(wild) == MAX_DISPERSION


def _night(counts, **fields):
    return {"run_id": fields.pop("run_id", "n"), "committed_at": fields.pop("committed_at", "2026-01-01"),
            "predicted_counts": counts, **fields}


def test_alerted_nights_stay_out_of_the_baseline():
    from batchml.monitoring.baseline import baseline_from_rows

    rows = [_night([10, 10], alert_kinds=[]), _night([19, 1], alert_kinds=["sustained_shift"]),
            _night([11, 9], alert_kinds=["error_ratio"]), _night([12, 8], alert_kinds=float("nan"))]
    assert [h.tolist() for h in baseline_from_rows(rows).history] == [[10, 10], [11, 9], [12, 8]]


def test_an_accepted_run_restarts_the_baseline_and_the_cusum():
    from batchml.monitoring.baseline import baseline_from_rows
    from batchml.records import AcceptedBaseline

    rows = [_night([10, 10], run_id="a", committed_at="1", alert_kinds=[], cusum_up=[5, 5], cusum_down=[0, 0]),
            _night([19, 1], run_id="b", committed_at="2", alert_kinds=["sustained_shift"], cusum_up=[7, 7],
                   cusum_down=[0, 0])]
    accepted = AcceptedBaseline.from_dict({"run_id": "b", "committed_at": "2", "predicted_counts": [19, 1]})
    base = baseline_from_rows(rows, accepted)
    assert [h.tolist() for h in base.history] == [[19, 1]] and base.cusum is None
    assert baseline_from_rows(rows).cusum.tolist() == [[7, 7], [0, 0]]


# -- whole nights through build_row -------------------------------------------------------------------

CARD = {"reference": {"accuracy": 0.7, "predicted_counts": [500] * 10}, "metrics": {"validation": {}}}


def _monitor(counts_by_night, cfg=None):
    """Each night's counts through build_row and alerts, the way monitor_run chains them."""
    from batchml.monitoring import MonitorConfig, evaluate
    from batchml.monitoring.baseline import baseline_from_rows
    from batchml.records import ModelCard, RunManifest
    from batchml.stats import PartitionStats

    cfg, rows, kinds = cfg or MonitorConfig(), [], []
    run = {"run_id": "n", "dataset": "d", "model_version": "m/v1", "classes": [str(c) for c in range(10)],
           "max_error_ratio": 0.01}
    for t, counts in enumerate(counts_by_night):
        stats = PartitionStats(10, rows=int(counts.sum()), predicted_counts=counts,
                               calibrated_confidence_sum=0.7 * counts.sum())  # as sure as the reference
        report = evaluate(RunManifest.from_dict({**run, "run_id": f"n{t}", "committed_at": f"{t:05d}"}), stats,
                          ModelCard.from_dict(CARD), baseline_from_rows(rows, None, cfg.history_nights), cfg)
        rows.append(report.row.to_dict())
        kinds.append(report.row.alert_kinds)
    return kinds


def test_a_doubled_class_alerts_on_every_night_whatever_came_before():
    rng = np.random.default_rng(3)
    clean, doubled = np.full(10, 0.1), np.r_[0.2, np.full(9, 0.8 / 9)]
    nights = [rng.multinomial(2000, clean) for _ in range(10)]
    nights += [np.array([1900] + [11] * 9)]  # a wild night
    nights += [rng.multinomial(2000, doubled if t % 3 == 0 else clean) for t in range(30)]
    kinds = _monitor(nights)
    shifted = [k for t, k in enumerate(kinds[11:]) if t % 3 == 0]
    assert all("sustained_shift" in k for k in shifted)
    assert sum(bool(k) for t, k in enumerate(kinds[11:]) if t % 3) <= 1


def test_clean_nights_alarm_at_most_at_the_stated_rate():
    from batchml.monitoring.rules import MonitorConfig

    # at p = 0.01 each of the two class-mix rules alarms on at most 1% of clean nights
    cfg = MonitorConfig(shift_p_value=0.01, shift_min_js=0.0)
    rng = np.random.default_rng(4)
    kinds = _monitor([rng.multinomial(2000, np.full(10, 0.1)) for _ in range(400)], cfg)
    single = [k for k in kinds if {"new_shift", "sustained_shift"} & set(k)]
    assert len(single) / len(kinds) <= 2 * 0.01 + 0.01


def test_a_subtle_persistent_shift_is_found_within_a_few_nights():
    rng = np.random.default_rng(5)
    subtle = np.r_[0.12, np.full(9, 0.88 / 9)]  # one predicted share 1.2x
    kinds = _monitor([rng.multinomial(2000, np.full(10, 0.1)) for _ in range(30)]
                     + [rng.multinomial(2000, subtle) for _ in range(10)])
    assert not any(kinds[:30])
    first = next(t for t, k in enumerate(kinds[30:]) if "persistent_shift" in k)
    assert first < 6
    assert not any({"new_shift", "sustained_shift"} & set(k) for k in kinds[30:30 + first])  # no night alone


def test_cusum_false_alarms_over_a_year_of_clean_nights():
    from batchml.monitoring import sequential
    from batchml.monitoring.history import baseline_mix, dispersion

    rng = np.random.default_rng(6)
    prior = np.array([0.11, 0.1, 0.08, 0.12, 0.09, 0.1, 0.1, 0.09, 0.1, 0.11])
    alarms, years = 0, 10
    for _ in range(years):
        history, state = [rng.multinomial(2000, prior) for _ in range(30)], None
        for _ in range(365):
            counts = rng.multinomial(2000, prior)
            pool = baseline_mix(history[-30:])
            state = sequential.cusum_step(state, sequential.night_evidence(counts, pool,
                                                                           dispersion(history[-30:])))
            if sequential.alarm(state):
                alarms, state = alarms + 1, None
            else:
                history.append(counts)
    assert alarms / years <= 0.5  # stated in sequential.py: about 0.2 a year


# -- label-free accuracy and output shift ----------------------------------------------------------------


def test_atc_threshold_makes_the_validation_share_above_it_its_accuracy():
    from batchml.reference import atc_reference, share_above

    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, (5000, 10))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.where(rng.random(5000) < 0.6, probs.argmax(axis=1), rng.integers(0, 10, 5000))
    ref = atc_reference(probs, labels, temperature=1.0)
    assert share_above(ref["score_hist"], ref["threshold"]) == pytest.approx(ref["validation_accuracy"], abs=0.002)


def test_atc_of_a_flawless_certain_model_is_its_accuracy_not_zero():
    """Every validation row right and certain: all scores sit at 1.0, in the top bin."""
    from batchml.monitoring.label_free import atc_accuracy
    from batchml.reference import atc_reference
    from batchml.stats import PartitionStats

    probs, labels = np.tile([1.0, 0.0], (50, 1)), np.zeros(50, int)
    ref = atc_reference(probs, labels, temperature=1.0)
    assert atc_accuracy(PartitionStats.from_predictions(probs, labels), ref["threshold"]) == pytest.approx(1.0)


def test_atc_follows_accuracy_where_average_confidence_does_not():
    """A model as sure as ever on images it now gets wrong: average confidence stays put, while the
    share of confident rows (what ATC counts) falls with the accuracy."""
    from batchml.monitoring.label_free import atc_accuracy
    from batchml.reference import atc_reference
    from batchml.stats import PartitionStats

    rng = np.random.default_rng(8)

    def night(n, sure_share):
        sure = rng.random(n) < sure_share  # sure rows are right; unsure rows are right 30% of the time
        top = np.where(sure, rng.uniform(0.85, 0.95, n), rng.uniform(0.35, 0.55, n))
        probs = np.column_stack([top, *[(1 - top) / 9] * 9])
        labels = np.where(sure | (rng.random(n) < 0.3), 0, 1)
        return probs, labels

    ref = atc_reference(*night(5000, 0.6), temperature=1.0)
    probs, labels = night(2000, 0.4)
    stats = PartitionStats.from_predictions(probs, labels)
    accuracy = stats.correct / stats.rows
    assert abs(atc_accuracy(stats, ref["threshold"]) - accuracy) < 0.03
    assert stats.calibrated_confidence_sum / stats.rows - accuracy > 0.05  # average confidence lags
    assert atc_accuracy(PartitionStats.from_dict({**stats.to_dict(), "score_hist": None}), 0.5) is None


def test_cot_reads_a_calibrated_models_accuracy_from_its_cells():
    from batchml.monitoring.label_free import cot_accuracy
    from batchml.stats import PartitionStats

    probs, labels = _calibrated_rows(np.random.default_rng(10), np.full(3, 1 / 3), 6000)
    stats = PartitionStats.from_predictions(probs, labels)
    assert cot_accuracy(stats, np.full(3, 1 / 3)) == pytest.approx(stats.correct / stats.rows, abs=0.02)
    old = PartitionStats.from_dict({k: v for k, v in stats.to_dict().items() if not k.startswith("cell_")})
    assert cot_accuracy(old, np.full(3, 1 / 3)) is None and cot_accuracy(stats, None) is None


def test_cot_charges_a_sure_model_that_piles_its_predictions_onto_one_class():
    """Corrupted images a model calls "class 0" with confidence 0.9 whatever they are: average
    confidence says 0.9; COT must move two thirds of the rows off class 0 and says about a third."""
    from batchml.monitoring.label_free import cot_accuracy
    from batchml.stats import PartitionStats

    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, 3000)
    probs = np.tile([0.9, 0.05, 0.05], (3000, 1))
    stats = PartitionStats.from_predictions(probs, labels)
    accuracy = stats.correct / stats.rows
    assert stats.calibrated_confidence_sum / stats.rows - accuracy > 0.5
    assert cot_accuracy(stats, np.full(3, 1 / 3)) == pytest.approx(accuracy, abs=0.05)


def test_label_free_accuracy_is_cot_against_the_mix_in_force():
    """COT assumes the expected class mix: the validation split's, until a run's mix is accepted;
    then the accepted run's estimated true mix, so an accepted new normal reads at its accuracy."""
    from batchml.monitoring.baseline import Baseline
    from batchml.records import AcceptedBaseline
    from batchml.stats import PartitionStats

    rng = np.random.default_rng(12)
    val_probs, val_labels = _calibrated_rows(rng, np.full(3, 1 / 3), 3000)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (val_labels, val_probs.argmax(axis=1)), 1)
    card = {"reference": {"accuracy": 0.8, "predicted_counts": confusion.sum(axis=0).tolist()},
            "metrics": {"validation": {"confusion": confusion.tolist()}},
            "calibration": {"temperature": 1.0, "bcts": {"temperature": 1.0, "bias": [0.0] * 3}}}
    run = {"run_id": "r", "dataset": "d", "model_version": "m/v1", "committed_at": "", "classes": ["a", "b", "c"]}
    probs, labels = _calibrated_rows(rng, np.array([0.1, 0.1, 0.8]), 3000)
    stats = PartitionStats.from_predictions(probs, np.full(3000, -1))
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    before = _build(run, stats, card)
    assert before.label_free_method == "cot"
    assert before.label_free_accuracy < accuracy - 0.1  # the moved mix reads as errors
    accepted = AcceptedBaseline.from_dict({"run_id": "a", "predicted_counts": stats.predicted_counts.tolist(),
                                           "estimated_mix": [0.1, 0.1, 0.8]})
    after = _build(run, stats, card, Baseline(accepted=accepted))
    assert after.label_free_accuracy == pytest.approx(accuracy, abs=0.03)
    # a model trained before the bias-corrected calibration has cells of temperature-scaled rows: no COT
    older = _build(run, stats, {**card, "calibration": {"temperature": 1.0}})
    assert older.cot_accuracy is None and older.label_free_method == "confidence"


def test_cot_needs_enough_finite_rows():
    """Small nights' class-mix noise reads as transport cost; a NaN from the model gives no estimate,
    not a crashed monitor."""
    from batchml.monitoring.label_free import MIN_COT_ROWS, cot_accuracy
    from batchml.monitoring.label_shift import mlls_priors
    from batchml.stats import PartitionStats

    probs, labels = _calibrated_rows(np.random.default_rng(13), np.full(3, 1 / 3), MIN_COT_ROWS)
    assert cot_accuracy(PartitionStats.from_predictions(probs[:-1], labels[:-1]), np.full(3, 1 / 3)) is None
    probs[0] = np.nan
    stats = PartitionStats.from_predictions(probs, labels)
    assert cot_accuracy(stats, np.full(3, 1 / 3)) is None
    assert mlls_priors(stats.cell_counts, stats.cell_prob_sums, np.full(3, 1 / 3)) is None


def test_bcts_leaves_a_class_missing_from_validation_alone():
    from batchml.train.calibration import fit_bcts

    probs, labels = _calibrated_rows(np.random.default_rng(14), np.array([0.5, 0.5, 0.0]), 3000)
    probs[:5] = np.nan  # rows a model got wrong in the worst way are left out, not poisoning the fit
    fitted = fit_bcts(probs, labels)
    assert fitted.bias[2] == 0.0 and np.isfinite(fitted.bias).all() and 0.5 < fitted.temperature < 2


def _ten_class_rows(rng, priors, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A calibrated 10-class model (Bayes posteriors of unit Gaussians 2.2 apart), about 74% right."""
    means = np.eye(10) * 2.2
    y = rng.choice(10, n, p=priors)
    logits = -0.5 * ((means[y] + rng.normal(size=(n, 10)))[:, None, :] - means[None]) ** 2
    logits = logits.sum(axis=2)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), y


def test_an_accepted_skewed_mix_reads_at_its_accuracy_night_after_night():
    """Once a skewed mix is accepted, COT, reweighted to it and anchored on the validation rows
    reweighted alike, reads the nights' accuracy: no false accuracy alerts (unanchored, one class at
    40% read two points low, and a third of the nights alerted)."""
    from batchml.monitoring import MonitorConfig, evaluate
    from batchml.monitoring.baseline import baseline_from_rows
    from batchml.records import AcceptedBaseline, ModelCard, RunManifest
    from batchml.reference import encode_rows
    from batchml.stats import BiasCorrection, PartitionStats

    rng = np.random.default_rng(15)
    val_probs, val_labels = _ten_class_rows(rng, np.full(10, 0.1), 5000)
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (val_labels, val_probs.argmax(axis=1)), 1)
    accuracy = float(np.trace(confusion) / 5000)
    card = {"reference": {"accuracy": accuracy, "predicted_counts": confusion.sum(axis=0).tolist()},
            "metrics": {"validation": {"confusion": confusion.tolist()}},
            "calibration": {"temperature": 1.0, "bcts": {"temperature": 1.0, "bias": [0.0] * 10}},
            "validation_rows": encode_rows(val_probs, val_labels)}
    skewed, bcts = np.r_[0.4, np.full(9, 0.6 / 9)], BiasCorrection(1.0, (0.0,) * 10)
    rows, accepted, errors = [], None, []
    for night in range(12):
        probs, labels = _ten_class_rows(rng, skewed, 2000)
        stats = PartitionStats.from_predictions(probs, np.full(2000, -1), bcts=bcts)
        run = {"run_id": f"n{night}", "dataset": "d", "model_version": "m/v1", "committed_at": f"{night:03d}",
               "classes": [str(c) for c in range(10)]}
        row = evaluate(RunManifest.from_dict({**run, "max_error_ratio": 0.0}), stats, ModelCard.from_dict(card),
                       baseline_from_rows(rows, accepted), MonitorConfig()).row
        rows.append(row.to_dict())
        if night == 0:
            accepted = AcceptedBaseline.from_dict({"run_id": "n0", "committed_at": "000", "predicted_counts":
                                                   row.predicted_counts, "estimated_mix": row.mlls_priors})
        else:
            assert "expected_accuracy_drop" not in row.alert_kinds
            errors.append(row.cot_accuracy - float((probs.argmax(axis=1) == labels).mean()))
    assert abs(np.mean(errors)) < 0.01


def test_ks_on_histograms_finds_a_moved_distribution_and_not_a_resample():
    from batchml.monitoring.label_free import ks_binned

    rng = np.random.default_rng(9)
    bins = np.linspace(0, 1, 101)
    a, b = (np.histogram(rng.beta(5, 2, 3000), bins)[0] for _ in range(2))
    moved = np.histogram(rng.beta(4, 2, 3000), bins)[0]
    assert ks_binned(a, b)[1] > 0.01 and ks_binned(a, moved)[1] < 1e-4


def test_old_cards_without_atc_fall_back_to_calibrated_confidence():
    from batchml.stats import PartitionStats

    stats = PartitionStats.from_predictions(np.tile([0.7, 0.3], (4, 1)), np.full(4, -1))
    run = {"run_id": "r", "dataset": "d", "model_version": "m/v1", "committed_at": "", "classes": ["a", "b"]}
    row = _build(run, stats, {"reference": {"accuracy": 0.7, "predicted_counts": [2, 2]},
                                 "metrics": {"validation": {}}})
    assert row.atc_accuracy is None and row.output_p_value is None
    assert row.label_free_accuracy == row.expected_accuracy == pytest.approx(0.7)


# -- alert rules ------------------------------------------------------------------------------------


def _row(**overrides):
    base = {"run_id": "r", "rows": 1000, "errors": 0, "error_ratio": 0.0, "labelled": 1000, "accuracy": 0.8,
            "accuracy_low": 0.775, "accuracy_high": 0.823, "reference_accuracy": 0.8, "expected_accuracy": 0.8,
            "label_free_accuracy": 0.8, "label_free_method": "atc", "p_value": 0.5, "sustained_p_value": 0.5,
            "js_distance": 0.01, "history_p_value": None, "history_js_distance": None, "history_nights": 0,
            "classes": ["a", "b"], "share_deviation": [0.1, -0.1], "share": [0.6, 0.4],
            "reference_share": [0.5, 0.5], "output_p_value": 0.5, "output_ks": 0.01, "output_worst": "score",
            "cusum_up": [0.0, 0.0], "cusum_down": [0.0, 0.0], "model_reference_p_value": 0.5,
            "model_reference_js_distance": 0.01, "max_error_ratio": 0.01}
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "kinds"),
    [
        ({}, []),
        ({"error_ratio": 0.05, "errors": 50}, ["error_ratio"]),
        ({"sustained_p_value": 1e-6, "js_distance": 0.1}, ["sustained_shift"]),
        ({"sustained_p_value": 1e-6, "js_distance": 0.005}, []),  # significant but negligible
        # a shift the usual nights share still differs from the reference: sustained, not new
        ({"sustained_p_value": 1e-6, "js_distance": 0.1, "history_p_value": 0.2, "history_js_distance": 0.01,
          "history_nights": 30}, ["sustained_shift"]),
        ({"history_p_value": 1e-6, "history_js_distance": 0.1, "history_nights": 30}, ["new_shift"]),
        ({"output_p_value": 1e-6, "output_ks": 0.1}, ["output_shift"]),
        ({"output_p_value": 1e-6, "output_ks": 0.01}, []),  # significant but negligible
        # the outputs moved because the class mix did: one alert, the mix's
        ({"sustained_p_value": 1e-6, "js_distance": 0.1, "output_p_value": 1e-6, "output_ks": 0.1},
         ["sustained_shift"]),
        # an accepted new mix: no longer a sustained shift, and the outputs moved with it (not corruption)
        ({"model_reference_p_value": 1e-6, "model_reference_js_distance": 0.1, "output_p_value": 1e-6,
          "output_ks": 0.1}, []),
        ({"cusum_up": [0.0, 20.0]}, ["persistent_shift"]),
        ({"accuracy": 0.6, "accuracy_low": 0.57, "accuracy_high": 0.63, "label_free_accuracy": 0.6},
         ["accuracy_drop"]),
        ({"label_free_accuracy": 0.9}, ["accuracy_divergence"]),
        # 3 points, and the sampling noise of 1,000 rows (2.33 x 1.3 points)
        ({"labelled": 0, "label_free_accuracy": 0.735}, ["expected_accuracy_drop"]),
        ({"labelled": 0, "label_free_accuracy": 0.76}, []),
    ],
)
def test_alert_rules(overrides, kinds):
    from batchml.monitoring.rules import MonitorConfig, single_night_alerts, with_persistent
    from batchml.records import MonitoringRow

    row, cfg = MonitoringRow.from_dict(_row(**overrides)), MonitorConfig()
    assert [a.kind for a in with_persistent(row, cfg, single_night_alerts(row, cfg))] == kinds


def test_the_report_names_each_alerts_kind_after_its_severity_prefix():
    from batchml.monitoring import RunReport, format_report
    from batchml.records import Alert
    from batchml.stats import PartitionStats

    stats = PartitionStats.from_predictions(np.tile([0.7, 0.3], (4, 1)), np.full(4, -1))
    run = {"run_id": "r", "dataset": "d", "model_version": "m/v1", "committed_at": "", "classes": ["a", "b"]}
    row = _build(run, stats, {"reference": {"accuracy": 0.7, "predicted_counts": [2, 2]},
                                 "metrics": {"validation": {}}})
    alert = Alert.from_dict({"kind": "new_shift", "severity": "warning", "message": "tonight differs"})
    assert "\nWARNING: tonight differs [new_shift]" in format_report(RunReport(row, [alert]))


# -- failure cases --------------------------------------------------------------------------------------


def test_failure_candidates_are_the_confidently_wrong_and_the_unsure_unlabelled():
    from batchml.score import failures

    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45], [0.95, 0.05]])
    labels = np.array([1, 1, 1, -1, -1])
    pixels = np.zeros((5, 32, 32, 3), np.uint8)
    t = failures.select([f"i{i}" for i in range(5)], "part-00000.parquet", pixels, probs, labels).to_pandas()
    assert t[t.kind == "misclassified"].image_id.tolist() == ["i0", "i1"]  # most confident first
    assert t[t.kind == "uncertain"].image_id.tolist() == ["i3", "i4"]  # least confident first
    assert t.thumbnail.map(len).gt(0).all()


def test_old_rows_without_alert_kinds_take_their_alerts_from_the_alerts_table(store):
    """Rows monitored by an earlier release have no alert_kinds column: a night that alerted then
    must still stay out of the baseline."""
    from batchml.monitoring.baseline import history
    from batchml.monitoring.tables import write_alerts, write_run_row
    from batchml.records import Alert, MonitoringRow, RunManifest

    for i in range(7):
        write_run_row(store, MonitoringRow.from_dict({"run_id": f"old-{i}", "model_version": "m/v1",
                                                      "committed_at": f"2026-11-0{i + 1}",
                                                      "predicted_counts": [900, 100] if i == 3 else [500, 500]}))
        write_alerts(store, f"old-{i}", [Alert.from_dict({"run_id": f"old-{i}", "kind": "class_shift",
                                                          "severity": "warning", "statistic": 1e-9,
                                                          "threshold": 1e-3, "message": "shift"})] if i == 3 else [])
    run = RunManifest.from_dict({"run_id": "new", "model_version": "m/v1", "committed_at": "2026-11-09"})
    baseline = history(store, run, 30)
    assert len(baseline.history) == 6 and all(h.tolist() == [500, 500] for h in baseline.history)


def _build(run: dict, stats, card: dict, baseline=None):
    """``build_row`` on a run and a card given as the parts a test needs."""
    from batchml.monitoring.row import build_row
    from batchml.records import ModelCard, RunManifest

    return build_row(RunManifest.from_dict(run), stats, ModelCard.from_dict(card), baseline)


# -- per-class performance ----------------------------------------------------------------------------


def _labelled_night(rng, n: int, recall: np.ndarray, swap: tuple[int, int, float] | None = None):
    """Confusion of n labelled rows of 10 balanced classes; ``swap`` (a, b, share): that share of
    class a's images labelled b (the label changed meaning)."""
    k = len(recall)
    cm = np.zeros((k, k), int)
    for c in range(k):
        probs = np.full(k, (1 - recall[c]) / (k - 1))
        probs[c] = recall[c]
        predicted = rng.choice(k, n // k, p=probs)
        labels = np.full(n // k, c)
        if swap and c == swap[0]:
            labels[rng.random(n // k) < swap[2]] = swap[1]
        np.add.at(cm, (labels, predicted), 1)
    return cm


def _class_alerts(cm, reference):
    from batchml.monitoring.classes import drop_p_values
    from batchml.monitoring.rules import MonitorConfig, class_performance_drop
    from batchml.records import MonitoringRow

    row = MonitoringRow.from_dict({"run_id": "r", "labelled": int(cm.sum()), "classes": [f"c{i}" for i in range(10)],
                                   "confusion": cm.tolist(), "reference_confusion": reference.tolist(),
                                   **drop_p_values(cm, reference)})
    return class_performance_drop(row, MonitorConfig())


def test_a_class_whose_labels_changed_meaning_is_named_with_its_confusion():
    rng = np.random.default_rng(21)
    recall = np.full(10, 0.8)
    reference = _labelled_night(rng, 10_000, recall)
    found = [_class_alerts(_labelled_night(rng, 2000, recall, (3, 5, 0.3)), reference) for _ in range(40)]
    assert sum(a is not None for a in found) >= 38
    alert = next(a for a in found if a)
    # cat images labelled dog: cat's precision and dog's recall fall, both named
    assert alert.message.startswith("c3 precision 0.8") and "c3 predictions labelled c5" in alert.message
    assert "c5 recall" in alert.message


def test_clean_labelled_nights_raise_no_class_alert():
    rng = np.random.default_rng(22)
    recall = np.linspace(0.6, 0.95, 10)
    reference = _labelled_night(rng, 10_000, recall)
    assert sum(_class_alerts(_labelled_night(rng, 2000, recall), reference) is not None for _ in range(300)) <= 3


def test_holm_adjusts_in_order_and_keeps_absent_tests():
    from batchml.monitoring.classes import holm

    adjusted = holm([0.01, None, 0.04, 0.03])
    assert adjusted[1] is None and [adjusted[i] for i in (0, 2, 3)] == pytest.approx([0.03, 0.06, 0.06])
