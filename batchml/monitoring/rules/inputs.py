"""What came in: input properties unlike training's, duplicated images, images unlike the training data."""

from __future__ import annotations

from batchml.monitoring.inputs import describe_property
from batchml.monitoring.rules.base import alert
from batchml.monitoring.rules.config import MonitorConfig
from batchml.records import Alert, MonitoringRow


def input_shift(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: properties of the images as received (size, file size, mode, format, orientation,
    brightness, contrast, saturation, sharpness, clipping, which way is up) moved from the training
    split's: a KS test per property and a chi-square per categorical property, Bonferroni-corrected
    at ``input_p_value``, with a KS distance of at least ``input_min_ks`` (total variation
    ``input_min_tv`` for categories). Names each property that moved and how."""
    if row.input_ks is None or not row.rows:
        return None
    tests = len(row.input_ks) + len(row.input_category_tv or [])
    moved = sorted(((ks, i) for i, (ks, p) in enumerate(zip(row.input_ks, row.input_p_value, strict=True))
                    if p * tests < cfg.input_p_value and ks >= cfg.input_min_ks), reverse=True)
    categories = sorted(((tv, change) for tv, p, change in zip(row.input_category_tv, row.input_category_p_value,
                                                               row.input_category_change, strict=True)
                         if p * tests < cfg.input_p_value and tv >= cfg.input_min_tv), reverse=True)
    if not moved and not categories:
        return None
    words = [describe_property(row.input_properties[i], row.input_median[i], row.input_reference_median[i])
             for _, i in moved[:3]] + [f"{change} of the images (training: the first figure)"
                                       for _, change in categories[:2]]
    effect = max([ks for ks, _ in moved] + [tv for tv, _ in categories])
    return alert(row, "input_shift", "warning", effect, cfg.input_min_ks,
                 f"the images differ from the training data: {'; '.join(words)}: check the camera or the "
                 "upstream job that makes these images")


def duplicates(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: at least ``duplicate_min_share`` of tonight's images are exact copies (of another
    image tonight, or of the last ``duplicate_nights`` runs'), or ``near_duplicate_min_share`` near
    copies within tonight (re-encoded, resized, brightened): a replayed or doubled batch."""
    if row.duplicate_within is None or not row.rows:
        return None
    exact = (row.duplicate_within + row.duplicate_recent) / row.rows
    near = row.near_duplicate / row.rows
    if exact < cfg.duplicate_min_share and near < cfg.near_duplicate_min_share:
        return None
    parts = [f"{row.duplicate_within:,} copies of images scored earlier tonight"] if row.duplicate_within else []
    parts += [f"{row.duplicate_recent:,} of the last {row.recent_nights_compared} runs' images"] \
        if row.duplicate_recent else []
    parts += [f"{row.near_duplicate:,} near copies ({row.near_duplicate_method})"] if row.near_duplicate else []
    return alert(row, "duplicates", "warning", exact + near, cfg.duplicate_min_share,
                 f"{exact + near:.0%} of the images are duplicates: {', '.join(parts)}; e.g. {row.duplicate_example}. "
                 "A batch delivered again? check the upstream job (the class-mix tests count each image once)")


def novel_inputs(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: the share of images unlike the training data (novelty score above the validation
    split's 95th percentile) exceeds the validation split's by ``novel_min_excess`` or more
    (one-sided binomial test at ``novel_p_value``)."""
    if row.novel_share is None or not row.rows:
        return None
    excess = row.novel_share - row.novel_reference_share
    if row.novel_p_value < cfg.novel_p_value and excess >= cfg.novel_min_excess:
        return alert(row, "novel_inputs", "warning", row.novel_share, row.novel_reference_share + cfg.novel_min_excess,
                     f"{row.novel_share:.0%} of the images are unlike the training data (the validation split: "
                     f"{row.novel_reference_share:.0%}): images of another kind in the feed? See the most novel in "
                     "the dashboard's failures view; the label-free estimate counts them as wrong")
    return None
