"""What came in, against what the model was trained on: input properties and novel images.

``input_shift`` compares tonight's input-health histograms (``batchml.data.health``) with the
training split's that the card keeps: a KS test per property on the fixed bins, a chi-square and
the total variation distance per categorical property (mode, channels, format, EXIF orientation).
``novelty`` compares the share of rows whose novelty score is above the card's threshold with the
validation split's share. Both read only the folded statistics and the card.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, chi2_contingency

from batchml.data.health import CHANNELS, FORMATS, MODES, ORIENTATIONS, PROPERTIES, UNITS, quantile
from batchml.monitoring.label_free import ks_binned
from batchml.records import ModelCard
from batchml.reference import health_stats
from batchml.stats import PartitionStats

CATEGORIES = {  # PartitionStats field -> the names of its values
    "mode_counts": list(MODES),
    "channel_counts": [f"{c} channel{'s' * (c > 1)}" for c in CHANNELS],
    "format_counts": list(FORMATS),
    "orientation_counts": ["no EXIF orientation", *(f"EXIF orientation {t}" for t in range(1, ORIENTATIONS))],
}


def input_shift(stats: PartitionStats, card: ModelCard) -> dict:
    """Per property: the KS distance and p-value (uncorrected) of tonight's histogram against the
    training split's, and both medians; per categorical property: the total variation distance,
    the chi-square p-value and the largest change in words. Empty where the card or the
    statistics lack input health."""
    reference = health_stats(card.input_health, len(card.classes)) if card.input_health else None
    if reference is None or not stats.has("health_hist") or not stats.rows:
        return {}
    tests = [ks_binned(tonight, ref) for tonight, ref in zip(stats.health_hist, reference.health_hist, strict=True)]
    medians = [(quantile(stats.health_hist, p, 0.5), quantile(reference.health_hist, p, 0.5)) for p in PROPERTIES]
    categories = [_category_shift(getattr(stats, f), getattr(reference, f), names) for f, names in CATEGORIES.items()]
    return {
        "input_properties": list(PROPERTIES),
        "input_ks": [d for d, _ in tests],
        "input_p_value": [p for _, p in tests],
        "input_median": [m for m, _ in medians],
        "input_reference_median": [r for _, r in medians],
        "input_category_tv": [tv for tv, _, _ in categories],
        "input_category_p_value": [p for _, p, _ in categories],
        "input_category_change": [change for _, _, change in categories],
    }


def _category_shift(tonight: np.ndarray, reference: np.ndarray, names: list[str]) -> tuple[float, float, str]:
    a, b = np.asarray(tonight, np.float64), np.asarray(reference, np.float64)
    if not a.sum() or not b.sum():
        return 0.0, 1.0, ""
    share, ref_share = a / a.sum(), b / b.sum()
    used = (a + b) > 0
    p = 1.0 if used.sum() < 2 else float(chi2_contingency(np.vstack([a[used], b[used]]), correction=False)[1])
    worst = int(np.argmax(np.abs(share - ref_share)))
    return float(np.abs(share - ref_share).sum() / 2), p, f"{names[worst]} {ref_share[worst]:.0%} -> {share[worst]:.0%}"


def describe_property(name: str, median: float | None, reference: float | None) -> str:
    """"saturation: median 0.01 tonight against 0.19 in training (mean HSV saturation, 0-1)"."""
    if median is None or reference is None:
        return name
    return f"{name}: median {_number(median)} tonight against {_number(reference)} in training ({UNITS[name]})"


def _number(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def novelty(stats: PartitionStats, card: ModelCard) -> dict:
    """The share of novel rows (score above the card's threshold) against the validation split's,
    with a one-sided binomial p-value and the KS distance of the score histograms. Empty where the
    card or the statistics lack novelty."""
    entry = card.novelty
    if not entry or not stats.has("novelty_hist") or not stats.rows:
        return {}
    rate = float(entry["validation_rate"])
    p = binomtest(stats.novel_rows, stats.rows, rate, alternative="greater").pvalue if rate < 1 else 1.0
    return {"novel_share": stats.novel_rows / stats.rows, "novel_reference_share": rate, "novel_p_value": float(p),
            "novelty_ks": ks_binned(stats.novelty_hist, np.asarray(entry["validation_hist"]))[0]}


# what an image unlike the training data is assumed to score: a prediction of a class it is not
NOVEL_ACCURACY = 0.0


def discount_novel(estimate: float | None, stats: PartitionStats, card: ModelCard) -> float | None:
    """A label-free estimate with the novel rows beyond the validation split's rate counted at
    ``NOVEL_ACCURACY`` instead of their confidence: images unlike the training data must not count as
    probably right. Unchanged on a night whose novel share is the validation split's."""
    if estimate is None or not card.novelty or not stats.has("novelty_hist") or not stats.novel_rows:
        return estimate
    excess = max(0.0, stats.novel_rows / stats.rows - float(card.novelty["validation_rate"]))
    confidence = stats.novel_confidence_sum / stats.novel_rows
    return float(np.clip(estimate - excess * (confidence - NOVEL_ACCURACY), 0.0, 1.0))
