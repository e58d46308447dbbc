"""Fold a committed run's partition statistics into one monitoring row, its alerts and its
failure-case snapshot.

Alert rules, each with its reason:
- ``no_rows`` (error): not one image was scored (all undecodable, even where the run
  allowed that): there is nothing to monitor, and no news is not good news.
- ``error_ratio`` (error): more undecodable images than the run allowed.
- ``class_shift`` (warning): the predicted class mix differs from the model's reference
  (chi-square test at ``shift_p_value``, with a Jensen-Shannon distance of at least
  ``shift_min_js`` so that huge runs do not alarm on negligible changes) *and*, once
  there are enough nights, from the recent nights' baseline at the same level. Both
  must reject, so a night alarms falsely with probability at most ``shift_p_value``:
  over N nights the expected number of false alarms is at most N x ``shift_p_value``.
- ``accuracy_drop`` (error): the 95% interval of labelled accuracy lies wholly more than
  ``accuracy_drop`` below the reference accuracy.
- ``accuracy_divergence`` (warning): the label-free estimate (calibrated confidence)
  falls outside the measured accuracy's interval widened by ``divergence_tolerance``:
  the model's confidence no longer tracks its accuracy, a sign of concept drift.
- ``expected_accuracy_drop`` (warning): on unlabelled runs, the label-free estimate is
  ``accuracy_drop`` below the reference accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from batchml import layout
from batchml.errors import BatchmlError
from batchml.layout import ModelVersion
from batchml.monitoring.classes import per_class_metrics
from batchml.monitoring.history import history_shift
from batchml.monitoring.label_shift import estimate_priors
from batchml.monitoring.shift import class_shift, wilson_interval
from batchml.monitoring.tables import read_table, write_alerts, write_run_row
from batchml.registry import read_card
from batchml.score import failures
from batchml.stats import PartitionStats
from batchml.store import Store


@dataclass(frozen=True)
class MonitorConfig:
    shift_p_value: float = 1e-3  # per-night false alarm bound of the class-mix alert
    shift_min_js: float = 0.02  # smallest Jensen-Shannon distance worth an alert
    history_nights: int = 30  # recent committed runs of the same model forming the baseline
    accuracy_drop: float = 0.05  # how far below the reference accuracy is an error
    divergence_tolerance: float = 0.02  # label-free vs measured accuracy, beyond the interval
    min_labelled: int = 30  # fewer labelled rows: no accuracy verdicts


@dataclass
class RunReport:
    row: dict
    alerts: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(a["severity"] == "error" for a in self.alerts)


def fold_run(store: Store, run_id: str) -> tuple[dict, PartitionStats]:
    """A committed run's manifest and the sum of its partition statistics."""
    if not store.exists(layout.run_path(run_id, layout.RUN_MANIFEST)):
        hint = ("it is not committed yet: rerun `batchml score --run-id " + run_id + "` to finish it"
                if store.exists(layout.run_path(run_id, layout.RUN_SPEC)) else "no such run")
        raise BatchmlError(f"run {run_id!r} in {store.url()}: {hint}")
    manifest = store.read_json(layout.run_path(run_id, layout.RUN_MANIFEST))
    k = len(manifest["classes"])
    parts = [
        PartitionStats.from_dict(store.read_json(layout.run_stats(run_id, p["partition"]))["stats"])
        for p in manifest["partitions"]
    ]
    return manifest, PartitionStats.total(parts, k)


def summarise(stats: PartitionStats, classes: list[str]) -> dict:
    """The labelled-sample statistics of any sum of partitions: a run or a date range."""
    labelled = stats.labelled
    low, high = wilson_interval(stats.correct, labelled)
    return {
        "rows": stats.rows,
        "errors": stats.errors,
        "error_ratio": stats.errors / (stats.rows + stats.errors) if stats.rows + stats.errors else 0.0,
        "labelled": labelled,
        "correct": stats.correct,
        "accuracy": stats.correct / labelled if labelled else None,
        "accuracy_low": low if labelled else None,
        "accuracy_high": high if labelled else None,
        "mean_confidence": stats.confidence_sum / stats.rows if stats.rows else None,
        "expected_accuracy": stats.calibrated_confidence_sum / stats.rows if stats.rows else None,
        "classes": classes,
        **{k: v for k, v in stats.to_dict().items() if k not in ("rows", "errors", "labelled", "correct")},
        **per_class_metrics(stats.confusion),
    }


def summarise_rows(rows, classes: list[str]) -> dict:
    """Fold monitoring rows (runs over a date range, say) exactly, as their statistics add up."""
    parts = [PartitionStats.from_dict({"num_classes": len(classes), **r}) for r in rows.to_dict("records")]
    return summarise(PartitionStats.total(parts, len(classes)), classes)


def monitor_range(store: Store, since: str | None = None, until: str | None = None,
                  model_version: str | None = None) -> dict:
    """Labelled-sample statistics over the monitored runs committed in [since, until] (ISO dates)."""
    runs = read_table(store, "runs")
    if "committed_at" in runs:
        day = runs.committed_at.str[:10]
        runs = runs[(day >= (since or "")) & (day <= (until or "9999"))]
        if model_version:
            runs = runs[runs.model_version == model_version]
    if runs.empty or "committed_at" not in runs:
        which = f" for {model_version}" if model_version else ""
        raise BatchmlError(f"no monitored runs between {since or 'the start'} and {until or 'now'}{which}: "
                           "run `batchml monitor --run-id ID` first")
    classes = list(runs.classes.iloc[0])
    if any(list(c) != classes for c in runs.classes):
        raise BatchmlError("these runs predict different classes: pass --model to compare one model's runs")
    return {"runs": len(runs), "first_run": runs.committed_at.min(), "last_run": runs.committed_at.max(),
            **summarise_rows(runs, classes)}


def format_range(summary: dict) -> str:
    s = summary
    lines = [f"{s['runs']} runs committed {s['first_run']} to {s['last_run']}: {s['rows']:,} predictions, "
             f"{s['errors']} errors"]
    if s["labelled"]:
        lines.append(f"accuracy {s['accuracy']:.4f} ({s['correct']}/{s['labelled']} labelled rows correct; "
                     f"95% CI {s['accuracy_low']:.4f}-{s['accuracy_high']:.4f})")
    lines.append(f"  {'class':<12} {'prec.':>6} {'recall':>6} {'f1':>6} {'fpr':>6} {'fnr':>6} {'support':>8}")
    for i, c in enumerate(s["classes"]):
        cells = " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6}"
                         for v in (s["precision"][i], s["recall"][i], s["f1"][i], s["fpr"][i], s["fnr"][i]))
        lines.append(f"  {c:<12} {cells} {s['support'][i]:>8}")
    return "\n".join(lines)


def monitor_run(store: Store, run_id: str, cfg: MonitorConfig = MonitorConfig()) -> RunReport:
    """Monitor a committed run: write its row, alerts and failure-case snapshot."""
    manifest, stats = fold_run(store, run_id)
    card = read_card(store, ModelVersion.parse(manifest["model_version"]))
    row = build_row(manifest, stats, card, _history(store, manifest, cfg.history_nights), cfg)
    report = RunReport(row, alerts(row, manifest["max_error_ratio"], cfg))
    write_run_row(store, row)
    write_alerts(store, run_id, report.alerts)
    snapshot = failures.snapshot(store, run_id, [p["partition"] for p in manifest["partitions"]],
                                 manifest["classes"])
    store.write_parquet(layout.monitoring_path("failures", run_id), snapshot)
    return report


def build_row(run: dict, stats: PartitionStats, card: dict, history: list[np.ndarray],
              cfg: MonitorConfig = MonitorConfig()) -> dict:
    """The monitoring row of one run from its summed statistics, its model's card and the
    predicted class counts of recent nights (oldest first). Pure: benchmarks call it too."""
    reference = card["reference"]
    return {
        "run_id": run["run_id"],
        "dataset": run["dataset"],
        "model_version": run["model_version"],
        "committed_at": run["committed_at"],
        "monitored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reference_accuracy": reference["accuracy"],
        **summarise(stats, run["classes"]),
        **class_shift(stats.predicted_counts, np.asarray(reference["predicted_counts"])),
        **(history_shift(history, stats.predicted_counts) or {
            "history_nights": len(history), "history_chi2": None, "history_dispersion": None,
            "history_p_value": None}),
        **_label_shift(card, stats),
    }


def _history(store: Store, manifest: dict, nights: int) -> list[np.ndarray]:
    """Predicted class counts of the model's runs committed before this one, oldest first."""
    runs = read_table(store, "runs")
    if "model_version" not in runs:
        return []
    runs = runs[(runs.model_version == manifest["model_version"]) & (runs.run_id != manifest["run_id"])
                & (runs.committed_at <= manifest["committed_at"])]
    return [np.asarray(c) for c in runs.sort_values("committed_at").predicted_counts.tail(nights)]


def _label_shift(card: dict, stats: PartitionStats) -> dict:
    """Estimated true class mix (soft BBSE); absent for cards without validation matrices."""
    joint = card["metrics"]["validation"].get("prob_confusion")
    if joint is None or stats.rows == 0:
        return {"estimated_priors": None, "estimated_priors_low": None, "estimated_priors_high": None,
                "bbse_condition_number": None, "bbse_well_conditioned": None}
    est = estimate_priors(np.asarray(joint), stats.prob_sums / stats.rows, stats.rows)
    return {"estimated_priors": est["priors"], "estimated_priors_low": est["priors_low"],
            "estimated_priors_high": est["priors_high"], "bbse_condition_number": est["condition_number"],
            "bbse_well_conditioned": est["well_conditioned"]}


def alerts(row: dict, max_error_ratio: float, cfg: MonitorConfig) -> list[dict]:
    """The alert rules of this module's docstring, applied to one monitoring row."""
    out = []
    if row["rows"] == 0:
        out.append(_alert("no_rows", "error", 0, 1, f"no image was scored ({row['errors']} undecodable)"))
    if row["error_ratio"] > max_error_ratio:
        out.append(_alert("error_ratio", "error", row["error_ratio"], max_error_ratio,
                          f"{row['errors']} undecodable images ({row['error_ratio']:.2%})"))
    history_rejects = row["history_p_value"] is None or row["history_p_value"] < cfg.shift_p_value
    if row["p_value"] < cfg.shift_p_value and row["js_distance"] >= cfg.shift_min_js and history_rejects:
        worst = int(np.argmax(np.abs(row["share_deviation"])))
        out.append(_alert(
            "class_shift", "warning", row["p_value"], cfg.shift_p_value,
            f"predicted class mix differs from the reference (JS distance {row['js_distance']:.3f}, "
            f"p={row['p_value']:.1e}) and from the last {row['history_nights']} nights; largest change: "
            f"{row['classes'][worst]} {row['reference_share'][worst]:.1%} -> {row['share'][worst]:.1%}",
        ))
    if row["labelled"] >= cfg.min_labelled:
        floor = row["reference_accuracy"] - cfg.accuracy_drop
        if row["accuracy_high"] < floor:
            out.append(_alert(
                "accuracy_drop", "error", row["accuracy"], floor,
                f"accuracy {row['accuracy']:.1%} (95% CI {row['accuracy_low']:.1%}-"
                f"{row['accuracy_high']:.1%}) is below the reference {row['reference_accuracy']:.1%}",
            ))
        expected, tol = row["expected_accuracy"], cfg.divergence_tolerance
        if not row["accuracy_low"] - tol <= expected <= row["accuracy_high"] + tol:
            out.append(_alert(
                "accuracy_divergence", "warning", expected - row["accuracy"], tol,
                f"label-free estimate {expected:.1%} disagrees with measured accuracy {row['accuracy']:.1%}: "
                "the model's confidence no longer tracks its accuracy (concept drift?)",
            ))
    elif row["expected_accuracy"] is not None and row["expected_accuracy"] < (
        floor := row["reference_accuracy"] - cfg.accuracy_drop
    ):
        out.append(_alert(
            "expected_accuracy_drop", "warning", row["expected_accuracy"], floor,
            f"label-free accuracy estimate {row['expected_accuracy']:.1%} is below the reference "
            f"{row['reference_accuracy']:.1%}",
        ))
    return out


def _alert(kind: str, severity: str, statistic: float, threshold: float, message: str) -> dict:
    return {"kind": kind, "severity": severity, "statistic": float(statistic),
            "threshold": float(threshold), "message": message}


def format_report(report: RunReport) -> str:
    r = report.row
    lines = [f"run {r['run_id']}: {r['rows']:,} predictions, {r['errors']} errors, "
             f"model {r['model_version']}, dataset {r['dataset']}"]
    if r["labelled"]:
        lines.append(
            f"accuracy {r['accuracy']:.4f} ({r['correct']}/{r['labelled']} labelled rows correct; "
            f"95% CI {r['accuracy_low']:.4f}-{r['accuracy_high']:.4f}; reference {r['reference_accuracy']:.4f})"
        )
    if r["rows"]:
        lines.append(f"expected accuracy from calibrated confidence: {r['expected_accuracy']:.4f}")
    history = (f"; vs last {r['history_nights']} nights: p-value {r['history_p_value']:.3g}"
               if r["history_p_value"] is not None else "")
    lines.append(f"class mix vs reference: JS distance {r['js_distance']:.4f}, "
                 f"chi2 {r['chi2']:.1f}, p-value {r['p_value']:.3g}{history}")
    width = max(len(c) for c in r["classes"])
    lines.append(f"  {'class':<{width}}  {'share':>6}  {'ref':>6}  {'est.true':>8}  {'recall':>6}  {'prec.':>6}")
    for i, c in enumerate(r["classes"]):
        est = f"{r['estimated_priors'][i]:8.1%}" if r["estimated_priors"] else f"{'-':>8}"
        rec, prec = (f"{v:6.2f}" if v is not None else f"{'-':>6}" for v in (r["recall"][i], r["precision"][i]))
        lines.append(f"  {c:<{width}}  {r['share'][i]:6.1%}  {r['reference_share'][i]:6.1%}  {est}  {rec}  {prec}")
    for a in report.alerts or [{"severity": "ok", "message": "no alerts"}]:
        lines.append(f"{a['severity'].upper()}: {a['message']}")
    return "\n".join(lines)
