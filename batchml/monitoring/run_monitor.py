"""Fold a committed run's partition statistics into one monitoring row and its alerts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from batchml.errors import BatchmlError
from batchml.monitoring.shift import class_shift, wilson_interval
from batchml.monitoring.tables import write_alerts, write_run_row
from batchml.registry import ModelVersion, read_card
from batchml.scoring import run_prefix
from batchml.stats import PartitionStats
from batchml.store import Store


@dataclass(frozen=True)
class MonitorConfig:
    shift_p_value: float = 1e-3  # class-mix shift: the test must reject at this level...
    shift_min_js: float = 0.05  # ...and the Jensen-Shannon distance reach this effect size
    accuracy_drop: float = 0.05  # error when the interval's top is this far below the reference
    min_labelled: int = 30  # fewer labelled rows: no accuracy verdict


@dataclass
class RunReport:
    row: dict
    alerts: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(a["severity"] == "error" for a in self.alerts)


def fold_run(store: Store, run_id: str) -> tuple[dict, PartitionStats]:
    """A committed run's manifest and the sum of its partition statistics."""
    prefix = run_prefix(run_id)
    if not store.exists(f"{prefix}/manifest.json"):
        hint = ("it is not committed yet: rerun `batchml score --run-id " + run_id + "` to finish it"
                if store.exists(f"{prefix}/run.json") else "no such run")
        raise BatchmlError(f"run {run_id!r} in {store.url()}: {hint}")
    manifest = store.read_json(f"{prefix}/manifest.json")
    k = len(manifest["classes"])
    parts = [
        PartitionStats.from_dict(store.read_json(f"{prefix}/stats/{p['partition'].removesuffix('.parquet')}.json")["stats"])
        for p in manifest["partitions"]
    ]
    return manifest, PartitionStats.total(parts, k)


def monitor_run(store: Store, run_id: str, cfg: MonitorConfig = MonitorConfig()) -> RunReport:
    manifest, stats = fold_run(store, run_id)
    card = read_card(store, ModelVersion(*manifest["model_version"].split("/")))
    reference = card["reference"]
    shift = class_shift(stats.predicted_counts, np.asarray(reference["predicted_counts"]))
    low, high = wilson_interval(stats.correct, stats.labelled)
    scored = stats.rows + stats.errors
    row = {
        "run_id": run_id,
        "dataset": manifest["dataset"],
        "model_version": manifest["model_version"],
        "committed_at": manifest["committed_at"],
        "monitored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": stats.rows,
        "errors": stats.errors,
        "error_ratio": stats.errors / scored if scored else 0.0,
        "labelled": stats.labelled,
        "correct": stats.correct,
        "accuracy": stats.correct / stats.labelled if stats.labelled else None,
        "accuracy_low": low if stats.labelled else None,
        "accuracy_high": high if stats.labelled else None,
        "reference_accuracy": reference["accuracy"],
        "mean_confidence": stats.confidence_sum / stats.rows if stats.rows else None,
        "expected_accuracy": stats.calibrated_confidence_sum / stats.rows if stats.rows else None,
        "classes": manifest["classes"],
        "predicted_counts": stats.predicted_counts.tolist(),
        "confusion": stats.confusion.tolist(),
        **shift,
    }
    report = RunReport(row, _alerts(row, manifest, cfg))
    write_run_row(store, row)
    write_alerts(store, run_id, report.alerts)
    return report


def _alerts(row: dict, manifest: dict, cfg: MonitorConfig) -> list[dict]:
    alerts = []
    if row["error_ratio"] > manifest["max_error_ratio"]:
        alerts.append(_alert("error_ratio", "error", row["error_ratio"], manifest["max_error_ratio"],
                             f"{row['errors']} undecodable images ({row['error_ratio']:.2%})"))
    if row["p_value"] < cfg.shift_p_value and row["js_distance"] >= cfg.shift_min_js:
        worst = int(np.argmax(np.abs(row["share_deviation"])))
        alerts.append(_alert(
            "class_shift", "warning", row["js_distance"], cfg.shift_min_js,
            f"predicted class mix differs from the reference (JS distance {row['js_distance']:.3f}, "
            f"p={row['p_value']:.1e}); largest change: {row['classes'][worst]} "
            f"{row['reference_share'][worst]:.1%} -> {row['share'][worst]:.1%}",
        ))
    if row["labelled"] >= cfg.min_labelled:
        floor = row["reference_accuracy"] - cfg.accuracy_drop
        if row["accuracy_high"] < floor:
            alerts.append(_alert(
                "accuracy_drop", "error", row["accuracy"], floor,
                f"accuracy {row['accuracy']:.1%} (95% CI {row['accuracy_low']:.1%}-"
                f"{row['accuracy_high']:.1%}) is below the reference {row['reference_accuracy']:.1%}",
            ))
    return alerts


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
    lines.append(f"class mix vs reference: JS distance {r['js_distance']:.4f}, "
                 f"chi2 {r['chi2']:.1f}, p-value {r['p_value']:.3g}")
    width = max(len(c) for c in r["classes"])
    for c, s, ref in zip(r["classes"], r["share"], r["reference_share"], strict=True):
        lines.append(f"  {c:<{width}}  {s:6.1%}  (reference {ref:6.1%})")
    for a in report.alerts or [{"severity": "ok", "message": "no alerts"}]:
        lines.append(f"{a['severity'].upper()}: {a['message']}")
    return "\n".join(lines)
