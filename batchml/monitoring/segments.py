"""Where: the run's rules applied to each segment (a camera, a site) alone, so that every alert
names the segments that drive it, and a fault confined to one segment is found even where the
whole night dilutes it below every threshold.

Each segment with at least ``segment_min_rows`` rows gets its own row (``monitoring/segments/``),
judged against the same references as the run (the card, the accepted run) at thresholds divided
by the number of segments judged (Bonferroni), by the rules that need no history of the segment.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
from scipy.stats import norm

from batchml.labels import LabelSources
from batchml.monitoring import rules
from batchml.monitoring.baseline import Baseline
from batchml.monitoring.duplicates import duplicates
from batchml.monitoring.row import build_row
from batchml.monitoring.rules import MonitorConfig
from batchml.records import Alert, ModelCard, MonitoringRow, RunManifest
from batchml.stats import MISSING_SEGMENT, OTHER_SEGMENT, PartitionStats

# what a segment is judged on alone: rules with a test of their own, not the history's
SEGMENT_RULES = (rules.no_rows, rules.duplicates, rules.input_shift, rules.novel_inputs, rules.sustained_shift,
                 rules.accuracy_drop, rules.class_performance_drop)
JUDGED_KINDS = {r.__name__ for r in SEGMENT_RULES} | {"expected_accuracy_drop"}


def segment_stats(stats: PartitionStats, most: int) -> dict[str, PartitionStats]:
    """The ``most`` largest segments by rows, and the rest folded into ``OTHER_SEGMENT``."""
    ordered = sorted(stats.segments.items(), key=lambda kv: (-kv[1].rows, kv[0]))
    kept = {v: s for v, s in ordered if v != OTHER_SEGMENT}
    top = dict(list(kept.items())[:most])
    rest = [s for v, s in ordered if v not in top]
    if rest:
        top[OTHER_SEGMENT] = PartitionStats.total(rest, stats.num_classes)
    return top


def judge_segments(run: RunManifest, stats: PartitionStats, card: ModelCard, baseline: Baseline,
                   cfg: MonitorConfig, segment_by: str | None, hashes: pd.DataFrame | None = None,
                   recent: dict[str, pd.DataFrame] | None = None, labels: LabelSources | None = None
                   ) -> tuple[list[MonitoringRow], dict[str, list[Alert]]]:
    """Each segment's row, and the alerts of those large enough to judge (``labels``: where the run's
    labels came from, as for the run's row)."""
    segments = segment_stats(stats, cfg.segments_max) if stats.segments else {}
    judged = [v for v, s in segments.items() if s.rows >= cfg.segment_min_rows]
    if len(judged) < 2:  # one segment is the run itself
        return [], {}
    strict = _bonferroni(cfg, len(judged))
    rows, raised = [], {}
    # each hash row's segment as the statistics count it: null is MISSING_SEGMENT, and a value outside
    # the segments kept apart is OTHER_SEGMENT's (the hashes keep every row's own value)
    where = None
    if hashes is not None and len(hashes) and "segment" in hashes:
        where = hashes.segment.astype(object).where(hashes.segment.notna(), MISSING_SEGMENT).astype(str)
        where = where.where(where.isin([v for v in segments if v != OTHER_SEGMENT]), OTHER_SEGMENT)
    for value, s in segments.items():
        duplicated = None
        if hashes is not None and len(hashes):
            mine = hashes[where == value] if where is not None else hashes.iloc[:0]
            duplicated = duplicates(mine, recent or {}, stats.num_classes) or None
        row = build_row(run, s, card, Baseline(accepted=baseline.accepted), duplicated, value, segment_by, labels)
        rows.append(row)
        if value in judged:
            found = [a for rule in SEGMENT_RULES if (a := rule(row, strict))]
            found += [a for a in [rules.expected_accuracy_drop(row, strict)] if a]
            raised[value] = found
    return rows, raised


def _bonferroni(cfg: MonitorConfig, n: int) -> MonitorConfig:
    z = float(norm.isf(norm.sf(cfg.label_free_noise_z) / n))  # the same one-sided level, shared by n segments
    return replace(cfg, shift_p_value=cfg.shift_p_value / n, input_p_value=cfg.input_p_value / n,
                   novel_p_value=cfg.novel_p_value / n, class_p_value=cfg.class_p_value / n, label_free_noise_z=z)


def locate(alerts: list[Alert], raised: dict[str, list[Alert]], segment_by: str | None) -> list[Alert]:
    """The run's alerts with the segments that raised the same kind named (none named where every
    judged segment did); then the kinds only some segments raised, each as one alert of the
    segment that moved most."""
    out, kinds, by_cause = [], {a.kind for a in alerts}, {}
    for a in alerts:
        where = [v for v, found in raised.items() if any(f.kind == a.kind for f in found)]
        if where and len(where) < len(raised):
            worst = max((f for v in where for f in raised[v] if f.kind == a.kind), key=lambda f: f.statistic)
            a = replace(worst, segment=_named(segment_by, where), message=_in(segment_by, where, worst.message))
            by_cause.setdefault(rules.cause_of(a.kind), where)
        out.append(a)
    # a kind no segment is judged by (the mix against the recent nights needs each segment's history)
    # is where another alert of the same cause is: the class mix moved in camera 2, by both tests
    out = [replace(a, segment=_named(segment_by, where), message=_in(segment_by, where, a.message))
           if a.segment is None and a.kind not in JUDGED_KINDS and (where := by_cause.get(rules.cause_of(a.kind)))
           else a for a in out]
    alone: dict[str, list[tuple[str, Alert]]] = {}
    for value, found in raised.items():
        for f in found:
            if f.kind not in kinds:
                alone.setdefault(f.kind, []).append((value, f))
    for hits in alone.values():
        where = [v for v, _ in hits]
        worst = max((f for _, f in hits), key=lambda f: f.statistic)
        out.append(replace(worst, segment=_named(segment_by, where), message=_in(segment_by, where, worst.message)))
    return out


VOLUME_MIN_SEGMENT = 30  # images a segment sent on each recent night to be watched for going quiet


def short_segments(row: MonitoringRow, stats: PartitionStats, baseline: Baseline, cfg: MonitorConfig,
                   segment_by: str | None) -> list[Alert]:
    """``volume_drop`` of each segment that sent at least ``VOLUME_MIN_SEGMENT`` images on every one of
    the recent clean nights that were segmented and sends far fewer tonight, or none (a camera gone
    dark). A segment folded into ``OTHER_SEGMENT`` tonight is not judged: its size is not known."""
    nights = baseline.segment_sizes[-cfg.history_nights:]
    if len(nights) < rules.VOLUME_NIGHTS:
        return []
    tonight = segment_stats(stats, cfg.segments_max) if stats.segments else {}
    watched = [v for v in nights[-1] if v != OTHER_SEGMENT and all(n.get(v, 0) >= VOLUME_MIN_SEGMENT for n in nights)]
    out = []
    for value in sorted(watched):
        if value not in tonight and OTHER_SEGMENT in tonight:
            continue
        s = tonight.get(value)
        size = replace(row, rows=s.rows if s else 0, errors=s.errors if s else 0)
        where = _named(segment_by, [value])
        if a := rules.volume_drop(size, cfg, [n[value] for n in nights], where):
            out.append(replace(a, segment=where))
    return out


def _named(segment_by: str | None, values: list[str]) -> str:
    return f"{segment_by or 'segment'}={', '.join(v if v.strip() else repr(v) for v in values)}"  # '' is a value


def _in(segment_by: str | None, values: list[str], message: str) -> str:
    return f"in {_named(segment_by, values)}: {message}"
