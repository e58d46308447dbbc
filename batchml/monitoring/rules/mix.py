"""The class mix: against the recent nights, the reference or the accepted run, over nights (CUSUM); and the outputs."""

from __future__ import annotations

import numpy as np

from batchml.monitoring import sequential
from batchml.monitoring.rules.base import alert
from batchml.monitoring.rules.config import MonitorConfig
from batchml.records import Alert, MonitoringRow


def new_shift(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Warning: tonight's predicted class mix differs from the recent clean nights' (overdispersed
    chi-square at ``shift_p_value``, Jensen-Shannon distance at least ``shift_min_js``)."""
    p = cfg.shift_p_value
    if row.history_p_value is not None and row.history_p_value < p and row.history_js_distance >= cfg.shift_min_js:
        return alert(row, "new_shift", "warning", row.history_p_value, p,
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
        return alert(row, "sustained_shift", "warning", row.sustained_p_value, p,
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
        return alert(row, "output_shift", "warning", row.output_p_value, p,
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
    return alert(row, "persistent_shift", "warning", state, sequential.THRESHOLD,
                  f"evidence accumulated over nights ({state:.1f} nats): {row.classes[k]}'s share "
                  f"has moved {('up', 'down')[direction]} by about {sequential.RATIO}x from the "
                  "recent clean nights'")
