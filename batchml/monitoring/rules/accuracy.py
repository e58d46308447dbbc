"""Accuracy: measured on labelled rows, estimated without labels, and one class's."""

from __future__ import annotations

import math

import numpy as np

from batchml.monitoring.classes import holm, row_normalised
from batchml.monitoring.rules.base import alert
from batchml.monitoring.rules.config import MonitorConfig
from batchml.records import Alert, MonitoringRow


def labels_needed(row: MonitoringRow, cfg: MonitorConfig) -> int:
    """Labelled rows the label-based rules wait for: ``min_labelled``, and ``min_label_coverage`` of the rows."""
    return max(cfg.min_labelled, math.ceil(cfg.min_label_coverage * (row.rows or 0) - 1e-9))


def labels_judged(row: MonitoringRow, cfg: MonitorConfig) -> bool:
    """Whether the labels can be judged: enough of them, and an estimate of the night's accuracy
    from them (``realized``: none where they are not representative)."""
    return row.labelled >= labels_needed(row, cfg) and realized(row)[0] is not None


def realized(row: MonitoringRow) -> tuple[float | None, float | None, float | None]:
    """The night's accuracy by its labels, with its 95% interval: ``realized_accuracy`` (a row made
    before late labels: its labelled rows', which were drawn at ingest)."""
    if row.realized_method is None:
        return row.accuracy, row.accuracy_low, row.accuracy_high
    return row.realized_accuracy, row.realized_accuracy_low, row.realized_accuracy_high


def accuracy_drop(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Error: the 95% interval of the realized accuracy (``batchml.labels.realized``: the labelled
    rows', reweighted where they were drawn uncertain-first) lies wholly more than ``accuracy_drop``
    below the reference accuracy, once the labels can be judged (``labels_judged``)."""
    floor, (accuracy, low, high) = row.reference_accuracy - cfg.accuracy_drop, realized(row)
    if labels_judged(row, cfg) and high < floor:
        return alert(row, "accuracy_drop", "error", accuracy, floor,
                     f"accuracy {accuracy:.1%}{_reweighted(row)} (95% CI {low:.1%}-{high:.1%}) "
                     f"is below the reference {row.reference_accuracy:.1%}")
    return None


def accuracy_divergence(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: the label-free estimate falls outside the realized accuracy's interval widened by
    ``divergence_tolerance``: the model's confidence no longer tracks its accuracy (concept drift)."""
    expected, tol = row.label_free_accuracy, cfg.divergence_tolerance
    if not labels_judged(row, cfg) or expected is None:
        return None
    accuracy, low, high = realized(row)
    if not low - tol <= expected <= high + tol:
        return alert(row, "accuracy_divergence", "warning", expected - accuracy, tol,
                     f"label-free estimate {expected:.1%} disagrees with measured accuracy "
                     f"{accuracy:.1%}{_reweighted(row)}: the model's confidence no longer tracks "
                     "its accuracy (concept drift?)")
    return None


def _reweighted(row: MonitoringRow) -> str:
    return " (reweighted by confidence: the labels were drawn uncertain-first)" \
        if row.realized_method == "reweighted" else ""


def expected_accuracy_drop(row: MonitoringRow, cfg: MonitorConfig, mix_moved: bool = False) -> Alert | None:
    """Warning: on runs with too few labels, the label-free estimate (COT, else ATC, else calibrated
    confidence) is ``label_free_drop`` below the reference accuracy, and further than the night's
    own sampling noise (``label_free_noise_z`` standard errors of an accuracy at the reference on
    this many rows): a clean night of 500 reads a few points either way."""
    if labels_judged(row, cfg) or row.label_free_accuracy is None or not row.rows:
        return None
    ref = row.reference_accuracy
    floor = ref - cfg.label_free_drop - cfg.label_free_noise_z * math.sqrt(ref * (1 - ref) / row.rows)
    if row.label_free_accuracy < floor:
        return alert(row, "expected_accuracy_drop", "warning", row.label_free_accuracy, floor,
                      f"label-free accuracy estimate ({row.label_free_method}) {row.label_free_accuracy:.1%} is "
                      f"below the reference {row.reference_accuracy:.1%}{_cot_caveat(row, mix_moved)}")
    return None


def class_performance_drop(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: one class's recall or precision on the labelled rows fell by ``class_min_drop`` or
    more against the reference (and the recent clean nights, where they hold enough labels),
    Holm-corrected over the 2K tests at ``class_p_value``. Names the class and the confusion that
    grew: a change confined to a few classes hides in the overall accuracy. Only on labels drawn at
    random: an uncertain-first sample's confusion is not the night's, and is not reweighted."""
    if row.labelled < labels_needed(row, cfg) or row.realized_method not in (None, "labelled") \
            or row.reference_confusion is None:
        return None
    tonight, reference = (row_normalised(np.asarray(m)) for m in (row.confusion, row.reference_confusion))
    tonight_cols, reference_cols = (_column_normalised(np.asarray(m)) for m in (row.confusion, row.reference_confusion))
    k = len(row.classes)
    p = holm([*row.recall_p_value, *row.precision_p_value])
    found = []
    for i, adjusted in enumerate(p):
        c, metric = i % k, ("recall", "precision")[i // k]
        before, now = (reference[c, c], tonight[c, c]) if metric == "recall" else (reference_cols[c, c],
                                                                                    tonight_cols[c, c])
        if adjusted is not None and adjusted < cfg.class_p_value and before - now >= cfg.class_min_drop:
            found.append((before - now, c, metric, before, now, adjusted))
    if not found:
        return None
    found.sort(reverse=True)
    drop, c, metric, before, now, adjusted = found[0]
    name = row.classes[c]
    if metric == "recall":  # the true class's rows went where?
        grown = tonight[c] - reference[c]
        grown[c] = -1
        j = int(np.argmax(grown))
        confusion = f"{name} read as {row.classes[j]} {reference[c, j]:.0%} -> {tonight[c, j]:.0%}"
    else:  # the predictions of the class came from where?
        grown = tonight_cols[:, c] - reference_cols[:, c]
        grown[c] = -1
        j = int(np.argmax(grown))
        confusion = (f"{name} predictions labelled {row.classes[j]} "
                     f"{reference_cols[j, c]:.0%} -> {tonight_cols[j, c]:.0%}")
    also = "; also " + ", ".join(f"{row.classes[o]} {m} {b:.2f} -> {n:.2f}" for _, o, m, b, n, _ in found[1:4]) \
        if len(found) > 1 else ""
    against = "the reference and the recent nights" if row.recent_confusion is not None else "the reference"
    return alert(row, "class_performance_drop", "warning", drop, cfg.class_min_drop,
                  f"{name} {metric} {before:.2f} -> {now:.2f} (p={adjusted:.1e} against {against}); "
                  f"{confusion}{also}: check how these classes were labelled tonight, and whether their images "
                  "changed; retrain if the new labels are right")


def _column_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each predicted class's column as shares of its predictions (a column with none stays 0)."""
    totals = confusion.sum(axis=0, keepdims=True).astype(np.float64)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)


def _cot_caveat(row: MonitoringRow, mix_moved: bool) -> str:
    """What a COT reading assumed, and what says otherwise: COT counts a moved class mix as errors."""
    if row.label_free_method != "cot":
        return ""
    mix = f"accepted run {row.accepted_run}'s" if row.accepted_run else "the validation split's"
    atc = f", ATC {row.atc_accuracy:.1%}" if row.atc_accuracy is not None else ""
    moved = "; the class mix moved too (above), which COT reads as errors" if mix_moved else ""
    return f" (COT against {mix} class mix{atc}{moved})"
