"""The text reports: one monitored run (``format_report``) and a range of runs (``format_range``).

Each alert is one line, ``SEVERITY: message [kind]``: nightly logs are searched for "ERROR: " and
"WARNING: ".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchml.monitoring import sequential
from batchml.records import Alert, MonitoringRow


@dataclass
class RunReport:
    """A monitored run: its row, its alerts, and where the thresholds came from."""

    row: MonitoringRow
    alerts: list[Alert] = field(default_factory=list)
    config_source: str | None = None  # the --config file, None for the defaults
    segments: list[MonitoringRow] = field(default_factory=list)  # one row per segment, where segmented

    @property
    def failed(self) -> bool:
        return any(a.severity == "error" for a in self.alerts)


def format_report(report: RunReport) -> str:
    r = report.row
    where = f" ({r.segment_by or 'segment'}={r.segment})" if r.segment else ""
    lines = [f"run {r.run_id}{where}: {r.rows:,} predictions, {r.errors} errors, "
             f"model {r.model_version}, dataset {r.dataset}"]
    # what changed leads, most likely cause first; the figures follow
    lines += [alert_line(a) for a in report.alerts] or ["OK: no alerts"]
    if report.config_source:
        lines.append(f"thresholds from {report.config_source}")
    lines += label_lines(r)
    if not r.rows:  # nothing scored: no estimates, mix, outputs or shares to show
        return "\n".join(lines)
    estimates = label_free_estimates(r, (("COT", "cot_accuracy"), ("ATC", "atc_accuracy"),
                                         ("calibrated confidence", "expected_accuracy")))
    lines.append(f"label-free accuracy estimates: {estimates} (alerts use {r.label_free_method})")
    history = (f"; vs last {r.history_nights} clean nights: p-value {r.history_p_value:.3g}"
               if r.history_p_value is not None else "")
    against = f"accepted run {r.accepted_run}" if r.accepted_run else "reference"
    lines.append(f"class mix vs {against}: JS distance {r.js_distance:.4f}, "
                 f"chi2 {r.chi2:.1f}, p-value {r.sustained_p_value:.3g}{history}")
    if r.output_p_value is not None:
        lines.append(f"outputs vs validation: KS {r.output_ks:.3f} ({r.output_worst}), "
                     f"p-value {r.output_p_value:.3g} (Bonferroni)")
    if r.cusum_up:
        lines.append(f"accumulated evidence (CUSUM): {max(max(r.cusum_up), max(r.cusum_down)):.1f} "
                     f"of {sequential.THRESHOLD:.0f} nats")
    lines += _inputs(r) + _class_table(r) + _segment_table(report)
    return "\n".join(lines)


def segment_report(report: RunReport, value: str) -> RunReport:
    """One segment's part of a run's report: its row and the alerts that name it."""
    rows = {s.segment: s for s in report.segments}
    if value not in rows:
        from batchml.errors import BatchmlError

        known = ", ".join(sorted(rows)) or ("none judged alone: the run was scored without --segment-by (or "
                                            "--segment-from-path), or each of its segments holds fewer than "
                                            "segment_min_rows rows (200 unless --config sets it)")
        raise BatchmlError(f"run {report.row.run_id} has no segment {value!r}; its segments: {known}")
    named = [a for a in report.alerts if a.segment and value in a.segment.partition("=")[2].split(", ")]
    return RunReport(rows[value], named, report.config_source)


def _inputs(r: MonitoringRow) -> list[str]:
    """What came in: duplicates, novel images, the property that moved most."""
    out = []
    if r.duplicate_within is not None:
        out.append(f"duplicates: {r.duplicate_within} within the run, {r.duplicate_recent} of the last "
                   f"{r.recent_nights_compared} runs, {r.near_duplicate} near copies")
    if r.novel_share is not None:
        out.append(f"novel images: {r.novel_share:.1%} (validation split {r.novel_reference_share:.1%})")
    if r.input_ks:
        worst = max(range(len(r.input_ks)), key=lambda i: r.input_ks[i])
        out.append(f"input properties vs training: largest KS {r.input_ks[worst]:.3f} ({r.input_properties[worst]})")
    return out


def _segment_table(report: RunReport) -> list[str]:
    """Per segment: rows, label-free accuracy, novel share, largest input KS, its alerts."""
    if not report.segments:
        return []
    raised = {}
    for a in report.alerts:
        for value in (a.segment or "").partition("=")[2].split(", "):
            raised.setdefault(value, []).append(a.kind)
    width = max(len(s.segment) for s in report.segments)
    lines = [f"  {report.row.segment_by or 'segment':<{width}}  {'rows':>7}  {'est.':>6}  {'novel':>6}  "
             f"{'KS':>5}  alerts"]
    for s in report.segments:
        novel = f"{s.novel_share:6.1%}" if s.novel_share is not None else f"{'-':>6}"
        ks = f"{max(s.input_ks):5.2f}" if s.input_ks else f"{'-':>5}"
        est = f"{s.label_free_accuracy:6.1%}" if s.label_free_accuracy is not None else f"{'-':>6}"
        kinds = " ".join(raised.get(s.segment, []))
        lines.append(f"  {s.segment:<{width}}  {s.rows:>7,}  {est}  {novel}  {ks}  {kinds}")
    return lines


def label_lines(r: MonitoringRow) -> list[str]:
    """What the labels say: the realized accuracy once they can be judged, "too few labels to judge
    (N of M)" until then, and the label-free estimate the night made beside it."""
    if not r.labelled:
        return []
    raw = f"{r.correct}/{r.labelled} labelled rows correct"
    coverage = f"; {r.label_coverage:.1%} of the rows labelled" if r.label_coverage is not None else ""
    late = f", {r.label_batches} late batch(es)" if r.label_batches else ""
    if r.labels_needed is not None and r.labelled < r.labels_needed:
        lines = [f"too few labels to judge ({r.labelled:,} of {r.labels_needed:,}): {raw}{coverage}{late}"]
    elif r.realized_method == "not representative":
        drawn = ", ".join(r.label_sampling or [])
        lines = [f"labels not representative (drawn as: {drawn}): accuracy {r.accuracy:.4f} on them ({raw}"
                 f"{coverage}{late}); no accuracy verdict"]
    elif r.realized_method == "reweighted":
        lines = [f"accuracy {r.realized_accuracy:.4f} reweighted by confidence bin (labels drawn uncertain-first: "
                 f"{r.accuracy:.4f} as drawn, {raw}; 95% CI {r.realized_accuracy_low:.4f}-"
                 f"{r.realized_accuracy_high:.4f}{coverage}{late}; reference {r.reference_accuracy:.4f})"]
    else:
        lines = [f"accuracy {r.accuracy:.4f} ({raw}; 95% CI {r.accuracy_low:.4f}-{r.accuracy_high:.4f}"
                 f"{coverage}{late}; reference {r.reference_accuracy:.4f})"]
    if r.label_free_error is not None:
        lines.append(f"the night's label-free estimate {r.night_label_free_accuracy:.4f} "
                     f"({r.night_label_free_method}, {(r.night_monitored_at or '')[:10]}): "
                     f"off by {r.label_free_error:+.4f}")
    return lines


def _class_table(r: MonitoringRow) -> list[str]:
    """Per class: tonight's share, the reference's, the estimated true share by BBSE and by MLLS/EM
    (each absent where the card or statistics lack it), recall and precision."""
    width = max(len(c) for c in r.classes)
    heads = ("share", "ref", "BBSE", "MLLS", "recall", "prec.")
    lines = [f"  {'class':<{width}}  " + "  ".join(f"{h:>6}" for h in heads)]
    for i, c in enumerate(r.classes):
        est = (f"{mix[i]:6.1%}" if mix is not None else f"{'-':>6}" for mix in (r.estimated_priors, r.mlls_priors))
        rec, prec = (f"{v:6.2f}" if v is not None else f"{'-':>6}" for v in (r.recall[i], r.precision[i]))
        lines.append(f"  {c:<{width}}  {r.share[i]:6.1%}  {r.reference_share[i]:6.1%}  {'  '.join(est)}  "
                     f"{rec}  {prec}")
    return lines


def format_range(summary: dict) -> str:
    """A range's summary (``monitor.monitor_range``)."""
    s = summary
    lines = [f"{s['runs']} runs committed {s['first_run']} to {s['last_run']}: {s['rows']:,} predictions, "
             f"{s['errors']} errors"]
    if len(s["models"]) > 1:
        lines.append(f"models {', '.join(s['models'])} folded together (no label-free estimate across models; "
                     "pass --model NAME/vN for one model's runs)")
    if s["labelled"]:
        lines.append(f"accuracy {s['accuracy']:.4f} ({s['correct']}/{s['labelled']} labelled rows correct; "
                     f"95% CI {s['accuracy_low']:.4f}-{s['accuracy_high']:.4f})")
    if estimates := label_free_estimates(s, (("COT", "cot_accuracy"), ("ATC", "atc_accuracy"))):
        lines.append(f"label-free accuracy: {estimates}")
    lines.append(f"  {'class':<12} {'prec.':>6} {'recall':>6} {'f1':>6} {'fpr':>6} {'fnr':>6} {'support':>8}")
    for i, c in enumerate(s["classes"]):
        cells = " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6}"
                         for v in (s["precision"][i], s["recall"][i], s["f1"][i], s["fpr"][i], s["fnr"][i]))
        lines.append(f"  {c:<12} {cells} {s['support'][i]:>8}")
    return "\n".join(lines)


def label_free_estimates(values: MonitoringRow | dict, named: tuple[tuple[str, str], ...]) -> str:
    """"COT 0.8123, ATC 0.8201": the estimates a row or range summary has."""
    get = values.get if isinstance(values, dict) else (lambda key: getattr(values, key))
    return ", ".join(f"{name} {get(key):.4f}" for name, key in named if get(key) is not None)


def alert_line(a: Alert) -> str:
    # the kind goes last: nightly logs are searched for "ERROR: " and "WARNING: "
    cause = f"{a.cause}: " if a.cause else ""
    return f"{a.severity.upper()}: {cause}{a.message} [{a.kind}]"
