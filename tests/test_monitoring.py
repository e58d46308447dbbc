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
