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
raise a single-night alert are kept out of the CUSUM, whose evidence they would swamp. Both read the
alerts of the night's first monitoring (``night_alert_kinds``): labels that arrive days later raise
their alerts on the night's row without changing what later nights were compared with.
"""



from __future__ import annotations

from batchml.monitoring.rules.accuracy import (
    accuracy_divergence,
    accuracy_drop,
    class_performance_drop,
    expected_accuracy_drop,
    labels_judged,
    labels_needed,
)
from batchml.monitoring.rules.base import Rule, alert
from batchml.monitoring.rules.config import MonitorConfig
from batchml.monitoring.rules.inputs import duplicates, input_shift, novel_inputs
from batchml.monitoring.rules.mix import largest_change, new_shift, output_shift, persistent_shift, sustained_shift
from batchml.monitoring.rules.scored import VOLUME_NIGHTS, error_ratio, no_rows, volume_drop
from batchml.records import Alert, MonitoringRow

__all__ = ["ORDER", "SINGLE_NIGHT", "VOLUME_NIGHTS", "MonitorConfig", "Rule", "accuracy_divergence",
           "accuracy_drop", "alert", "cause_of", "class_performance_drop", "duplicates", "error_ratio",
           "expected_accuracy_drop", "input_shift", "labels_judged", "labels_needed", "largest_change", "new_shift",
           "no_rows", "novel_inputs", "output_shift", "persistent_shift", "ranked", "single_night_alerts",
           "sustained_shift", "volume_drop", "with_persistent"]

# -- the rules in force ---------------------------------------------------------------------------

# kinds raised by tonight alone; any of them keeps the night out of the CUSUM
SINGLE_NIGHT = ("new_shift", "sustained_shift", "output_shift", "accuracy_drop", "expected_accuracy_drop",
                "input_shift", "duplicates", "novel_inputs", "volume_drop")
MIX_KINDS = ("new_shift", "sustained_shift", "persistent_shift")
# the report's order: what was scored, the class mix, the outputs, accuracy
ORDER = ("no_rows", "error_ratio", "volume_drop", "duplicates", "input_shift", "novel_inputs", "new_shift",
         "sustained_shift", "output_shift", "persistent_shift", "accuracy_drop", "accuracy_divergence",
         "class_performance_drop", "expected_accuracy_drop")


def single_night_alerts(row: MonitoringRow, cfg: MonitorConfig) -> list[Alert]:
    """The alerts tonight raises on its own (the CUSUM's come once its sums are known:
    ``with_persistent``)."""
    out = [a for rule in (no_rows, error_ratio) if (a := rule(row, cfg))]
    inputs = [a for rule in (duplicates, input_shift, novel_inputs) if (a := rule(row, cfg))]
    if row.rows:
        out += [a for rule in (new_shift, sustained_shift) if (a := rule(row, cfg))]
        # a changed mix moves the outputs by itself, and an unreadable night says enough already
        out += [a for a in [None if out else output_shift(row, cfg)] if a]
    out += [a for rule in (accuracy_drop, accuracy_divergence, class_performance_drop) if (a := rule(row, cfg))]
    moved = any(a.kind in MIX_KINDS for a in out)
    return out + inputs + [a for a in [expected_accuracy_drop(row, cfg, moved)] if a]


def with_persistent(row: MonitoringRow, cfg: MonitorConfig, single: list[Alert]) -> list[Alert]:
    """Tonight's alerts in report order: the single-night ones and, from the row's CUSUM sums,
    ``persistent_shift`` (whose news the label-free estimate's caveat then repeats)."""
    persistent = persistent_shift(row, cfg)
    if not persistent:
        return single
    out = [persistent] + [a if a.kind != "expected_accuracy_drop" else expected_accuracy_drop(row, cfg, True)
                          for a in single]
    return sorted(out, key=lambda a: ORDER.index(a.kind))


# -- the causes, ranked -------------------------------------------------------------------------------

CAUSES = {  # kind -> what changed, in the words the report leads with
    "no_rows": "undecodable inputs", "error_ratio": "undecodable inputs", "volume_drop": "missing inputs",
    "duplicates": "duplicates",
    "input_shift": "input properties", "novel_inputs": "novel images", "class_performance_drop": "class performance",
    "new_shift": "class mix", "sustained_shift": "class mix", "persistent_shift": "class mix",
    "output_shift": "model outputs", "accuracy_drop": "accuracy", "accuracy_divergence": "accuracy",
    "expected_accuracy_drop": "accuracy",
}
# upstream causes first: a replayed batch moves the class mix, corrupted or foreign images move the
# outputs and the accuracy, relabelled classes move the accuracy; each explains what follows it
TIERS = {"undecodable inputs": 0, "missing inputs": 0, "duplicates": 1, "input properties": 2, "novel images": 2,
         "class performance": 3, "class mix": 4, "model outputs": 5, "accuracy": 6}


def cause_of(kind: str) -> str:
    return CAUSES.get(kind, kind)


def ranked(alerts: list[Alert], row: MonitoringRow) -> list[Alert]:
    """The alerts, most likely cause first. Input properties and novel images both move when the
    images change; the properties lead (the camera, the pipeline: something to check) unless most
    images are unlike the training data and their share passes the largest property's KS distance
    (images of another kind in the feed)."""
    shares = {a.kind: a.statistic for a in alerts if a.kind in ("input_shift", "novel_inputs")}
    novel_first = len(shares) == 2 and shares["novel_inputs"] >= max(0.5, shares["input_shift"])

    def order(a: Alert) -> tuple[int, int]:
        tier = TIERS.get(cause_of(a.kind), 9)
        return tier, (a.kind == "input_shift") == novel_first if tier == TIERS["input properties"] else 0

    return sorted(alerts, key=order)
