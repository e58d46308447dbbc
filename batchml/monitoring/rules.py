"""The alert rules: one function per kind, each beside the thresholds it reads.

A rule reads a finished ``MonitoringRow`` (``monitoring.row``) and returns an ``Alert`` or None.
The row holds every measurement; a rule only decides. Thresholds live in ``MonitorConfig``, which
``--config FILE`` (TOML) overrides key by key.

False alarms: each single-night shift rule alarms on a clean night with probability at most
``shift_p_value`` (the tests are conservative on binned data), so over N clean nights the three
single-night shift rules raise at most 3 N x ``shift_p_value`` false alarms in expectation;
``persistent_shift`` adds the CUSUM's rate (``monitoring.sequential``). The measured rates are in
the README's measured section.

Nights that raise any alert but ``error_ratio`` are kept out of the nightly baseline; nights that
raise a single-night alert are kept out of the CUSUM, whose evidence they would swamp.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from batchml.errors import BatchmlError
from batchml.monitoring import sequential
from batchml.monitoring.classes import holm, row_normalised
from batchml.records import Alert, MonitoringRow


@dataclass(frozen=True)
class MonitorConfig:
    """The alert thresholds. ``from_file`` reads a TOML file of any of these keys."""

    shift_p_value: float = 1e-3  # per-night false alarm bound of each class-mix rule
    shift_min_js: float = 0.02  # smallest Jensen-Shannon distance (base 2) worth a class-mix alert
    history_nights: int = 30  # recent clean runs of the same model forming the nightly baseline
    accuracy_drop: float = 0.05  # labelled accuracy this far below the reference is an error
    label_free_drop: float = 0.03  # unlabelled: how far below the reference the estimate may fall
    output_min_ks: float = 0.03  # smallest KS distance of the output histograms worth an alert
    divergence_tolerance: float = 0.02  # label-free vs measured accuracy, beyond the interval
    min_labelled: int = 30  # fewer labelled rows: no accuracy verdicts
    class_p_value: float = 1e-3  # family-wise false alarm bound of the per-class recall/precision tests
    class_min_drop: float = 0.10  # smallest fall of one class's recall or precision worth an alert

    @classmethod
    def from_file(cls, path: str | Path) -> MonitorConfig:
        """Thresholds from a TOML file (top level, or a ``[monitor]`` table); unknown keys and wrong
        types are refused, naming the file and the keys it may hold."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise BatchmlError(f"--config {path}: no such file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise BatchmlError(f"--config {path}: not a readable TOML file ({e}); "
                               "fix it, or leave out --config for the defaults") from None
        data = data.get("monitor", data)
        known = {f.name: f for f in fields(cls)}
        if unknown := sorted(set(data) - set(known)):
            raise BatchmlError(f"--config {path}: unknown key(s) {', '.join(unknown)}; "
                               f"known: {', '.join(known)}")
        values = {}
        for key, value in data.items():
            want = int if known[key].type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, int | float) or (want is int and value != int(value)):
                raise BatchmlError(f"--config {path}: {key} must be a{'n integer' if want is int else ' number'}, "
                                   f"not {value!r}")
            if value < 0:
                raise BatchmlError(f"--config {path}: {key} must not be negative ({value})")
            values[key] = want(value)
        return replace(cls(), **values)


Rule = Callable[[MonitoringRow, MonitorConfig], Alert | None]


def _alert(row: MonitoringRow, kind: str, severity: str, statistic: float, threshold: float, message: str) -> Alert:
    return Alert.written({"run_id": row.run_id, "kind": kind, "severity": severity, "statistic": float(statistic),
                          "threshold": float(threshold), "message": message})


# -- what was scored --------------------------------------------------------------------------------


def no_rows(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Error: not one image was scored (all undecodable, even where the run allowed that): there
    is nothing to monitor, and no news is not good news."""
    if row.rows == 0:
        return _alert(row, "no_rows", "error", 0, 1, f"no image was scored ({row.errors} undecodable)")
    return None


def error_ratio(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Error: more undecodable images than the run allowed (its ``--max-error-ratio``)."""
    allowed = row.max_error_ratio if row.max_error_ratio is not None else 1.0
    if row.error_ratio > allowed:
        return _alert(row, "error_ratio", "error", row.error_ratio, allowed,
                      f"{row.errors} undecodable images ({row.error_ratio:.2%})")
    return None


# -- the class mix ------------------------------------------------------------------------------------


def new_shift(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: tonight's predicted class mix differs from the recent clean nights' (overdispersed
    chi-square at ``shift_p_value``, Jensen-Shannon distance at least ``shift_min_js``)."""
    p = cfg.shift_p_value
    if row.history_p_value is not None and row.history_p_value < p and row.history_js_distance >= cfg.shift_min_js:
        return _alert(row, "new_shift", "warning", row.history_p_value, p,
                      f"tonight's class mix differs from the last {row.history_nights} clean nights "
                      f"(JS distance {row.history_js_distance:.3f}, p={row.history_p_value:.1e})")
    return None


def sustained_shift(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: the mix differs from the model's reference (or from the mix accepted with
    ``batchml monitor --accept-baseline RUN_ID``), at the same level: raised every night the shift
    lasts, until someone accepts it."""
    p = cfg.shift_p_value
    if row.sustained_p_value < p and row.js_distance >= cfg.shift_min_js:
        against = f"the mix accepted at run {row.accepted_run}" if row.accepted_run else "the reference"
        return _alert(row, "sustained_shift", "warning", row.sustained_p_value, p,
                      f"class mix differs from {against} (JS distance {row.js_distance:.3f}, "
                      f"p={row.sustained_p_value:.1e}; largest change: {largest_change(row)}); "
                      f"if this is the new normal: batchml monitor --accept-baseline {row.run_id}")
    return None


def largest_change(row: MonitoringRow) -> str:
    worst = int(np.argmax(np.abs(row.share_deviation)))
    return f"{row.classes[worst]} {row.reference_share[worst]:.1%} -> {row.share[worst]:.1%}"


def output_shift(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: the model's output distribution (ATC score and per-class probability histograms,
    KS tests with Bonferroni) differs from its validation split's while the mix is the validation
    split's: covariate shift or corrupted images, seen without labels. A changed mix moves the
    per-class probabilities by itself, so neither tonight's shift nor an accepted new mix raises
    this alert too (``single_night_alerts`` runs it only where no class-mix rule fired)."""
    p = cfg.shift_p_value
    mix_as_reference = row.model_reference_p_value >= p or row.model_reference_js_distance < cfg.shift_min_js
    if mix_as_reference and row.output_p_value is not None and row.output_p_value < p \
            and row.output_ks >= cfg.output_min_ks:
        return _alert(row, "output_shift", "warning", row.output_p_value, p,
                      f"the model's outputs differ from its validation split ({row.output_worst} "
                      f"probabilities, KS {row.output_ks:.3f}, p={row.output_p_value:.1e} after "
                      "Bonferroni): covariate shift or corrupted images?")
    return None


def persistent_shift(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: evidence accumulated over nights (a CUSUM per class) says a class's share moved by
    about ``sequential.RATIO``x, too little for any one night to show."""
    if not row.cusum_up or not (hit := sequential.alarm([row.cusum_up, row.cusum_down])):
        return None
    direction, k = hit
    state = (row.cusum_up, row.cusum_down)[direction][k]
    return _alert(row, "persistent_shift", "warning", state, sequential.THRESHOLD,
                  f"evidence accumulated over nights ({state:.1f} nats): {row.classes[k]}'s share "
                  f"has moved {('up', 'down')[direction]} by about {sequential.RATIO}x from the "
                  "recent clean nights'")


# -- accuracy -----------------------------------------------------------------------------------------


def accuracy_drop(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Error: the 95% interval of labelled accuracy lies wholly more than ``accuracy_drop`` below
    the reference accuracy (at least ``min_labelled`` labelled rows)."""
    floor = row.reference_accuracy - cfg.accuracy_drop
    if row.labelled >= cfg.min_labelled and row.accuracy_high < floor:
        return _alert(row, "accuracy_drop", "error", row.accuracy, floor,
                      f"accuracy {row.accuracy:.1%} (95% CI {row.accuracy_low:.1%}-{row.accuracy_high:.1%}) "
                      f"is below the reference {row.reference_accuracy:.1%}")
    return None


def accuracy_divergence(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: the label-free estimate falls outside the measured accuracy's interval widened by
    ``divergence_tolerance``: the model's confidence no longer tracks its accuracy (concept drift)."""
    expected, tol = row.label_free_accuracy, cfg.divergence_tolerance
    if row.labelled < cfg.min_labelled or expected is None:
        return None
    if not row.accuracy_low - tol <= expected <= row.accuracy_high + tol:
        return _alert(row, "accuracy_divergence", "warning", expected - row.accuracy, tol,
                      f"label-free estimate {expected:.1%} disagrees with measured accuracy {row.accuracy:.1%}: "
                      "the model's confidence no longer tracks its accuracy (concept drift?)")
    return None


def expected_accuracy_drop(row: MonitoringRow, cfg: MonitorConfig, mix_moved: bool = False) -> Alert | None:
    """Warning: on runs with too few labels, the label-free estimate (COT, else ATC, else calibrated
    confidence) is ``label_free_drop`` below the reference accuracy."""
    if row.labelled >= cfg.min_labelled or row.label_free_accuracy is None:
        return None
    floor = row.reference_accuracy - cfg.label_free_drop
    if row.label_free_accuracy < floor:
        return _alert(row, "expected_accuracy_drop", "warning", row.label_free_accuracy, floor,
                      f"label-free accuracy estimate ({row.label_free_method}) {row.label_free_accuracy:.1%} is "
                      f"below the reference {row.reference_accuracy:.1%}{_cot_caveat(row, mix_moved)}")
    return None


def class_performance_drop(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: one class's recall or precision on the labelled rows fell by ``class_min_drop`` or
    more against the reference (and the recent clean nights, where they hold enough labels),
    Holm-corrected over the 2K tests at ``class_p_value``. Names the class and the confusion that
    grew: a change confined to a few classes hides in the overall accuracy."""
    if row.labelled < cfg.min_labelled or row.reference_confusion is None:
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
    return _alert(row, "class_performance_drop", "warning", drop, cfg.class_min_drop,
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


# -- the rules in force ---------------------------------------------------------------------------

# kinds raised by tonight alone; any of them keeps the night out of the CUSUM
SINGLE_NIGHT = ("new_shift", "sustained_shift", "output_shift", "accuracy_drop", "expected_accuracy_drop")
MIX_KINDS = ("new_shift", "sustained_shift", "persistent_shift")
# the report's order: what was scored, the class mix, the outputs, accuracy
ORDER = ("no_rows", "error_ratio", "new_shift", "sustained_shift", "output_shift", "persistent_shift",
         "accuracy_drop", "accuracy_divergence", "class_performance_drop", "expected_accuracy_drop")


def single_night_alerts(row: MonitoringRow, cfg: MonitorConfig) -> list[Alert]:
    """The alerts tonight raises on its own (the CUSUM's come once its sums are known:
    ``with_persistent``)."""
    out = [a for rule in (no_rows, error_ratio) if (a := rule(row, cfg))]
    if row.rows:
        out += [a for rule in (new_shift, sustained_shift) if (a := rule(row, cfg))]
        # a changed mix moves the outputs by itself, and an unreadable night says enough already
        out += [a for a in [None if out else output_shift(row, cfg)] if a]
    out += [a for rule in (accuracy_drop, accuracy_divergence, class_performance_drop) if (a := rule(row, cfg))]
    moved = any(a.kind in MIX_KINDS for a in out)
    return out + [a for a in [expected_accuracy_drop(row, cfg, moved)] if a]


def with_persistent(row: MonitoringRow, cfg: MonitorConfig, single: list[Alert]) -> list[Alert]:
    """Tonight's alerts in report order: the single-night ones and, from the row's CUSUM sums,
    ``persistent_shift`` (whose news the label-free estimate's caveat then repeats)."""
    persistent = persistent_shift(row, cfg)
    if not persistent:
        return single
    out = [persistent] + [a if a.kind != "expected_accuracy_drop" else expected_accuracy_drop(row, cfg, True)
                          for a in single]
    return sorted(out, key=lambda a: ORDER.index(a.kind))
