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


# -- alert rules ------------------------------------------------------------------------------------


def _row(**overrides):
    base = {"errors": 0, "error_ratio": 0.0, "labelled": 1000, "accuracy": 0.8, "accuracy_low": 0.775,
            "accuracy_high": 0.823, "reference_accuracy": 0.8, "expected_accuracy": 0.8, "p_value": 0.5,
            "js_distance": 0.01, "history_p_value": None, "history_nights": 0, "classes": ["a", "b"],
            "share_deviation": [0.1, -0.1], "share": [0.6, 0.4], "reference_share": [0.5, 0.5]}
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "kinds"),
    [
        ({}, []),
        ({"error_ratio": 0.05, "errors": 50}, ["error_ratio"]),
        ({"p_value": 1e-6, "js_distance": 0.1}, ["class_shift"]),
        ({"p_value": 1e-6, "js_distance": 0.005}, []),  # significant but negligible
        ({"p_value": 1e-6, "js_distance": 0.1, "history_p_value": 0.2, "history_nights": 30}, []),  # usual nights
        ({"accuracy": 0.6, "accuracy_low": 0.57, "accuracy_high": 0.63, "expected_accuracy": 0.6}, ["accuracy_drop"]),
        ({"expected_accuracy": 0.9}, ["accuracy_divergence"]),
        ({"labelled": 0, "expected_accuracy": 0.6}, ["expected_accuracy_drop"]),
    ],
)
def test_alert_rules(overrides, kinds):
    from batchml.monitoring.run_monitor import MonitorConfig, alerts

    assert [a["kind"] for a in alerts(_row(**overrides), 0.01, MonitorConfig())] == kinds


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
