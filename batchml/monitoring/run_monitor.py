"""Fold a committed run's partition statistics into one monitoring row, its alerts and its
failure-case snapshot.

Alert rules, each with its reason. Each shift rule alarms falsely on a clean night with
probability at most ``shift_p_value`` (the tests are conservative on binned data), so over N
clean nights the expected number of false alarms from the three single-night shift rules is
at most 3 N x ``shift_p_value``; ``persistent_shift`` adds about 0.1 a year (sequential.py).
- ``no_rows`` (error): not one image was scored (all undecodable, even where the run
  allowed that): there is nothing to monitor, and no news is not good news.
- ``error_ratio`` (error): more undecodable images than the run allowed.
- ``new_shift`` (warning): tonight's predicted class mix differs from the recent clean nights'
  (overdispersed chi-square at ``shift_p_value``, Jensen-Shannon distance >= ``shift_min_js``).
- ``sustained_shift`` (warning): the mix differs from the model's reference (or from the mix
  accepted with ``batchml monitor --accept-baseline RUN_ID``), at the same level: raised every
  night the shift lasts, until someone accepts it.
- ``persistent_shift`` (warning): evidence accumulated over nights (a CUSUM per class) says a
  class's share moved by about ``sequential.RATIO``x, too little for any one night to show.
- ``output_shift`` (warning): the model's output distribution (ATC score and per-class
  probability histograms, KS tests with Bonferroni) differs from its validation split's
  while the class mix rules above are quiet (a changed mix moves the outputs by itself):
  covariate shift or corrupted images, seen without labels.
- ``accuracy_drop`` (error): the 95% interval of labelled accuracy lies wholly more than
  ``accuracy_drop`` below the reference accuracy.
- ``accuracy_divergence`` (warning): the label-free estimate falls outside the measured
  accuracy's interval widened by ``divergence_tolerance``: the model's confidence no longer
  tracks its accuracy, a sign of concept drift.
- ``expected_accuracy_drop`` (warning): on unlabelled runs, the label-free estimate (ATC where
  the card has a threshold, else calibrated confidence) is ``label_free_drop`` below the
  reference accuracy.
Nights that raise any alert but ``error_ratio`` are kept out of the baseline; nights that raise
a single-night alert are kept out of the CUSUM, whose evidence they would swamp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from scipy.stats import chi2 as chi2_dist

from batchml import layout
from batchml.errors import BatchmlError
from batchml.layout import ModelVersion
from batchml.monitoring import failure_cases, sequential
from batchml.monitoring.classes import per_class_metrics
from batchml.monitoring.history import MIN_NIGHTS, baseline_mix, dispersion, history_shift
from batchml.monitoring.label_free import CotReference, atc_accuracy, output_shift
from batchml.monitoring.label_shift import bootstrap_priors, estimate_priors, mlls_priors
from batchml.monitoring.shift import class_shift, wilson_interval
from batchml.monitoring.tables import read_table, write_alerts, write_run_row
from batchml.records import MONITORING_NEEDS, ModelCard, RunManifest
from batchml.registry import read_card
from batchml.stats import BiasCorrection, PartitionStats
from batchml.store import Store


@dataclass(frozen=True)
class MonitorConfig:
    shift_p_value: float = 1e-3  # per-night false alarm bound of the class-mix alert
    shift_min_js: float = 0.02  # smallest Jensen-Shannon distance worth an alert
    history_nights: int = 30  # recent committed runs of the same model forming the baseline
    accuracy_drop: float = 0.05  # how far below the reference accuracy is an error
    label_free_drop: float = 0.03  # unlabelled: how far below the reference the estimate may fall
    output_min_ks: float = 0.03  # smallest KS distance of the output histograms worth an alert
    divergence_tolerance: float = 0.02  # label-free vs measured accuracy, beyond the interval
    min_labelled: int = 30  # fewer labelled rows: no accuracy verdicts


# alert kinds raised by tonight alone; any of them keeps the night out of the CUSUM
SINGLE_NIGHT = ("new_shift", "sustained_shift", "output_shift", "accuracy_drop", "expected_accuracy_drop")


@dataclass
class Baseline:
    """What earlier nights tell tonight's monitoring (see ``baseline_from_rows``)."""

    history: list[np.ndarray] = field(default_factory=list)  # predicted counts of clean nights, oldest first
    cusum: np.ndarray | None = None  # (2, K) last night's sums; None: start from zero
    accepted: dict | None = None  # the accepted-baseline record in force, if any
    # MLLS estimates of the clean nights since the accepted run: COT's expected mix averages them with
    # the accepted run's, steadier than that alone
    mixes: list[np.ndarray] = field(default_factory=list)


@dataclass
class RunReport:
    row: dict
    alerts: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(a["severity"] == "error" for a in self.alerts)


def fold_run(store: Store, run_id: str) -> tuple[RunManifest, PartitionStats]:
    """A committed run's manifest and the sum of its partition statistics."""
    if not store.exists(layout.run_path(run_id, layout.RUN_MANIFEST)):
        hint = ("it is not committed yet: rerun `batchml score --run-id " + run_id + "` to finish it"
                if store.exists(layout.run_path(run_id, layout.RUN_SPEC)) else "no such run")
        raise BatchmlError(f"run {run_id!r} in {store.url()}: {hint}")
    manifest = RunManifest.read(store, run_id)
    k = len(manifest.classes)
    parts = [
        PartitionStats.from_dict(store.read_json(layout.run_stats(run_id, p["partition"]))["stats"])
        for p in manifest.partitions
    ]
    return manifest, PartitionStats.total(parts, k)


def summarise(stats: PartitionStats, classes: list[str], atc_threshold: float | None = None,
              cot: CotReference | None = None) -> dict:
    """The labelled-sample statistics of any sum of partitions: a run or a date range, with the
    label-free estimates: COT (given what it needs, ``cot``), ATC (the card's threshold) and
    calibrated confidence; the first present is ``label_free_accuracy``."""
    labelled = stats.labelled
    expected = stats.calibrated_confidence_sum / stats.rows if stats.rows else None
    estimates = {"cot": cot.accuracy(stats) if cot else None, "atc": atc_accuracy(stats, atc_threshold),
                 "confidence": expected}
    method = next((m for m, v in estimates.items() if v is not None), "confidence")
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
        "expected_accuracy": expected,
        "atc_accuracy": estimates["atc"],
        "cot_accuracy": estimates["cot"],
        "label_free_accuracy": estimates[method],
        "label_free_method": method,
        "classes": classes,
        **{k: v for k, v in stats.to_dict().items() if k not in ("rows", "errors", "labelled", "correct")},
        **per_class_metrics(stats.confusion),
    }


def summarise_rows(rows, classes: list[str], atc_threshold: float | None = None) -> dict:
    """Fold monitoring rows (runs over a date range, say) exactly, as their statistics add up."""
    parts = [PartitionStats.from_dict({"num_classes": len(classes), **r}) for r in rows.to_dict("records")]
    return summarise(PartitionStats.total(parts, len(classes)), classes, atc_threshold)


def monitor_range(store: Store, since: str | None = None, until: str | None = None,
                  model_version: str | None = None) -> dict:
    """Labelled-sample statistics over the monitored runs committed in [since, until] (ISO dates)."""
    runs = read_table(store, "runs")
    day = runs.committed_at.str[:10]
    runs = runs[(day >= (since or "")) & (day <= (until or "9999"))]
    if model_version:
        runs = runs[runs.model_version == model_version]
    if runs.empty:
        which = f" for {model_version}" if model_version else ""
        raise BatchmlError(f"no monitored runs between {since or 'the start'} and {until or 'now'}{which}: "
                           "run `batchml monitor --run-id ID` first")
    classes = list(runs.classes.iloc[0])
    if any(list(c) != classes for c in runs.classes):
        raise BatchmlError("these runs predict different classes: pass --model to compare one model's runs")
    one_model = runs.model_version.nunique() == 1  # two models' thresholds and calibrations do not mix
    threshold = read_card(store, ModelVersion.parse(runs.model_version.iloc[0])).atc_threshold if one_model else None
    summary = summarise_rows(runs, classes, threshold)
    return {"runs": len(runs), "first_run": runs.committed_at.min(), "last_run": runs.committed_at.max(),
            **summary, **(_range_cot(runs) if one_model else {})}


def _range_cot(runs) -> dict:
    """COT over a range: the nights' own estimates, weighted by rows (each was measured against the
    mix in force that night, which the folded statistics no longer know); absent unless every night
    has one."""
    if "cot_accuracy" not in runs:  # every night monitored before COT
        return {}
    cot = pd.to_numeric(runs.cot_accuracy, errors="coerce")
    if cot.isna().any() or runs.rows.sum() == 0:
        return {}
    value = float((cot * runs.rows).sum() / runs.rows.sum())
    return {"cot_accuracy": value, "label_free_accuracy": value, "label_free_method": "cot"}


def _validation_mix(card: ModelCard) -> np.ndarray:
    """The true class mix of the model's validation split: the mix its probabilities are calibrated under."""
    counts = np.asarray(card.metrics.validation.confusion, dtype=np.float64).sum(axis=1)
    return counts / counts.sum()


def _cot_reference(card: ModelCard, baseline: Baseline) -> CotReference | None:
    """What COT needs for tonight. The expected mix is the validation split's, or once a run is
    accepted, its estimated true mix averaged with the clean nights' since (one night's estimate is
    noisy, and each point of error in it reads as errors every night). None for models trained
    before the bias-corrected calibration: their cells hold temperature-scaled probabilities, on
    which COT read clean nights two to three points low (benchmarks/shift_detection.py), so they
    keep ATC."""
    if not card.calibration or not card.calibration.bcts:
        return None
    calibrated, accepted = _validation_mix(card), baseline.accepted
    expected = calibrated
    if accepted:
        if accepted.get("estimated_mix") is not None:
            first = np.asarray(accepted["estimated_mix"], dtype=np.float64)
        else:  # accepted before the record kept the estimated mix: its predicted mix stands in
            first = np.asarray(accepted["predicted_counts"], dtype=np.float64) / np.sum(accepted["predicted_counts"])
        expected = np.mean([first, *baseline.mixes], axis=0)
    return CotReference(expected, calibrated, card.validation_rows, BiasCorrection.from_dict(card.calibration.bcts))


def format_range(summary: dict) -> str:
    s = summary
    lines = [f"{s['runs']} runs committed {s['first_run']} to {s['last_run']}: {s['rows']:,} predictions, "
             f"{s['errors']} errors"]
    if s["labelled"]:
        lines.append(f"accuracy {s['accuracy']:.4f} ({s['correct']}/{s['labelled']} labelled rows correct; "
                     f"95% CI {s['accuracy_low']:.4f}-{s['accuracy_high']:.4f})")
    if estimates := _label_free_estimates(s, (("COT", "cot_accuracy"), ("ATC", "atc_accuracy"))):
        lines.append(f"label-free accuracy: {estimates}")
    lines.append(f"  {'class':<12} {'prec.':>6} {'recall':>6} {'f1':>6} {'fpr':>6} {'fnr':>6} {'support':>8}")
    for i, c in enumerate(s["classes"]):
        cells = " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6}"
                         for v in (s["precision"][i], s["recall"][i], s["f1"][i], s["fpr"][i], s["fnr"][i]))
        lines.append(f"  {c:<12} {cells} {s['support'][i]:>8}")
    return "\n".join(lines)


def monitor_run(store: Store, run_id: str, cfg: MonitorConfig = MonitorConfig()) -> RunReport:
    """Monitor a committed run: write its row, alerts and failure-case snapshot."""
    manifest, stats = fold_run(store, run_id)
    card = read_card(store, ModelVersion.parse(manifest.model_version), MONITORING_NEEDS)
    row = build_row(manifest, stats, card, _history(store, manifest, cfg.history_nights), cfg)
    report = RunReport(row, alerts(row, manifest.max_error_ratio, cfg))
    row["alert_kinds"] = [a["kind"] for a in report.alerts]  # the next nights' baseline leaves these out
    write_run_row(store, row)
    write_alerts(store, run_id, report.alerts)
    snapshot = failure_cases.snapshot(store, run_id, [p["partition"] for p in manifest.partitions], manifest.classes)
    store.write_parquet(layout.monitoring_path("failures", run_id), snapshot)
    return report


def build_row(run: RunManifest | dict, stats: PartitionStats, card: ModelCard | dict,
              baseline: Baseline | None = None, cfg: MonitorConfig = MonitorConfig()) -> dict:
    """The monitoring row of one run from its summed statistics, its model's card and what
    earlier nights tell (``baseline_from_rows``). Pure: benchmarks call it too, with the run
    (identity and classes) and the card as dicts."""
    baseline, card, run = baseline or Baseline(), ModelCard.of(card), RunManifest.of(run)
    reference = card.reference
    accepted = baseline.accepted
    ref_counts = np.asarray(accepted["predicted_counts"] if accepted else reference.predicted_counts)
    atc = card.atc or {}
    row = {
        "run_id": run.run_id,
        "dataset": run.dataset,
        "model_version": run.model_version,
        "committed_at": run.committed_at,
        "monitored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reference_accuracy": reference.accuracy,
        "accepted_run": accepted["run_id"] if accepted else None,
        **summarise(stats, run.classes, card.atc_threshold, _cot_reference(card, baseline)),
        **class_shift(stats.predicted_counts, ref_counts),
        **(history_shift(baseline.history, stats.predicted_counts) or {
            "history_nights": len(baseline.history), "history_chi2": None, "history_dispersion": None,
            "history_p_value": None, "history_js_distance": None}),
        **output_shift(stats, atc),
        **_label_shift(card, stats),
    }
    row["sustained_p_value"] = _sustained_p(row)
    # the mix against the model's own reference, whatever was accepted since: the output test
    # compares with the validation split, whose mix that is
    own = class_shift(stats.predicted_counts, np.asarray(reference.predicted_counts)) if accepted else row
    row["model_reference_p_value"], row["model_reference_js_distance"] = own["p_value"], own["js_distance"]
    return {**row, **_cusum(row, stats, baseline, cfg)}


def _sustained_p(row: dict) -> float:
    """The reference test with the baseline's overdispersion (1 without a baseline)."""
    phi = row["history_dispersion"] or 1.0
    df = max(int((np.asarray(row["share"]) + np.asarray(row["reference_share"]) > 0).sum()) - 1, 1)
    return float(chi2_dist.sf(row["chi2"] / phi, df))


def _cusum(row: dict, stats: PartitionStats, baseline: Baseline, cfg: MonitorConfig) -> dict:
    """Tonight's CUSUM sums: last night's plus tonight's evidence against the clean baseline's mix,
    unless tonight already alarmed on its own or there is no baseline yet."""
    state = baseline.cusum
    single = {a["kind"] for a in alerts(row, 1.0, cfg)} & set(SINGLE_NIGHT)
    counted = not single and len(baseline.history) >= MIN_NIGHTS and stats.rows > 0
    if counted:
        evidence = sequential.night_evidence(stats.predicted_counts, baseline_mix(baseline.history),
                                             dispersion(baseline.history))
        state = sequential.cusum_step(state, evidence)
    state = np.zeros((2, len(stats.predicted_counts))) if state is None else np.asarray(state)
    return {"cusum_up": state[0].tolist(), "cusum_down": state[1].tolist(), "cusum_counted": counted}


def baseline_from_rows(rows: list[dict], accepted: dict | None = None, nights: int = 30) -> Baseline:
    """The baseline of tonight from the model's earlier monitoring rows (oldest first): the last
    ``nights`` nights that raised no alert (the accepted run counts whatever it raised), and the
    CUSUM sums of the last night, all since the accepted run if there is one."""
    if accepted:
        rows = [r for r in rows if r["committed_at"] >= accepted["committed_at"]]
    clean = [r for r in rows if not _breaks_baseline(r) or (accepted and r["run_id"] == accepted["run_id"])]
    history = [np.asarray(r["predicted_counts"]) for r in clean][-nights:]
    last = [r for r in rows if not accepted or r["run_id"] != accepted["run_id"]][-1:]
    mixes = [np.asarray(m, dtype=np.float64) for r in clean[-nights:]
             if accepted and r["run_id"] != accepted["run_id"] and len(m := _listed(r.get("mlls_priors")))]
    return Baseline(history, _cusum_state(last[0]) if last else None, accepted, mixes)


def _breaks_baseline(row: dict) -> bool:
    return any(k != "error_ratio" for k in _listed(row.get("alert_kinds")))


def _cusum_state(row: dict) -> np.ndarray | None:
    up, down = _listed(row.get("cusum_up")), _listed(row.get("cusum_down"))
    return np.asarray([up, down], dtype=np.float64) if len(up) and len(down) else None


def _listed(value) -> list:
    """A list column as read back; rows written before the column existed hold None or NaN."""
    if value is None or isinstance(value, float):
        return []
    return list(value)


def _history(store: Store, manifest: RunManifest | dict, nights: int) -> Baseline:
    """The baseline from the model's runs committed before this one."""
    manifest = RunManifest.of(manifest)
    runs = read_table(store, "runs")
    accepted = accepted_baseline(store, manifest.model_version, manifest.committed_at)
    runs = runs[(runs.model_version == manifest.model_version) & (runs.run_id != manifest.run_id)
                & (runs.committed_at <= manifest.committed_at)]
    rows = runs.sort_values("committed_at").to_dict("records")
    if any(r.get("alert_kinds") is None or isinstance(r.get("alert_kinds"), float) for r in rows):
        # rows written before alert_kinds was a column: their alerts are in the alerts table
        alerted = read_table(store, "alerts")
        kinds = alerted.groupby("run_id")["kind"].apply(list).to_dict()
        rows = [r if isinstance(r.get("alert_kinds"), list | np.ndarray) else {**r, "alert_kinds": kinds.get(
            r["run_id"], [])} for r in rows]
    return baseline_from_rows(rows, accepted, nights)


MIN_ACCEPTED_ROWS = 30  # a smaller run's class mix is mostly noise: it would be every later night's yardstick


def accept_baseline(store: Store, run_id: str, note: str = "") -> dict:
    """Record that a monitored run's class mix is the new normal for its model: from it on,
    ``sustained_shift`` compares with it, COT expects its true mix (its labels' where every row is
    labelled, else its MLLS estimate), and the nightly baseline and CUSUM restart there."""
    rows = read_table(store, "runs")
    match = rows[rows.run_id == run_id]
    if match.empty:
        raise BatchmlError(f"run {run_id!r} is not monitored yet: run `batchml monitor --run-id {run_id}` first")
    r = match.iloc[0]
    if r.rows < MIN_ACCEPTED_ROWS:
        raise BatchmlError(f"run {run_id!r} scored {r.rows} images: too few to define a class mix (at least "
                           f"{MIN_ACCEPTED_ROWS}; thousands make a steadier baseline): accept a larger run")
    labelled = np.asarray(_listed(r.confusion), dtype=np.float64).sum(axis=1) if r.labelled == r.rows else []
    mix = list(labelled / labelled.sum()) if len(labelled) else _listed(r.get("mlls_priors"))
    record = {"run_id": run_id, "model_version": r.model_version, "committed_at": r.committed_at,
              "predicted_counts": [int(c) for c in r.predicted_counts],
              "estimated_mix": [float(v) for v in mix] or None,
              "note": note,
              "accepted_at": datetime.now(UTC).isoformat(timespec="seconds")}
    store.write_json(layout.accepted_path(run_id), record)
    return record


def accepted_baseline(store: Store, model_version: str, committed_at: str) -> dict | None:
    """The latest accepted run of this model committed at or before ``committed_at``."""
    folder = layout.accepted_folder()
    records = [store.read_json(layout.accepted_file(name)) for name in store.list(folder, ".json")]
    records = [r for r in records if r["model_version"] == model_version and r["committed_at"] <= committed_at]
    return max(records, key=lambda r: (r["committed_at"], r["accepted_at"]), default=None)


def _label_shift(card: ModelCard, stats: PartitionStats) -> dict:
    """Estimated true class mix: soft BBSE with its interval, and MLLS/EM beside it; each absent where
    the card or the statistics predate what it needs."""
    joint = card.metrics.validation.prob_confusion
    if joint is None or stats.rows == 0:
        return {"estimated_priors": None, "estimated_priors_low": None, "estimated_priors_high": None,
                "estimated_priors_interval": None, "bbse_condition_number": None, "bbse_well_conditioned": None,
                "mlls_priors": None}
    mu = stats.prob_sums / stats.rows
    est = estimate_priors(np.asarray(joint), mu, stats.rows)
    rows = card.validation_rows
    # the bootstrap needs the validation rows; older cards keep the normal approximation
    low, high = bootstrap_priors(rows, mu, stats.rows) if rows else (est["priors_low"], est["priors_high"])
    return {"estimated_priors": est["priors"], "estimated_priors_low": low, "estimated_priors_high": high,
            "estimated_priors_interval": "bootstrap" if rows else "normal",
            "bbse_condition_number": est["condition_number"], "bbse_well_conditioned": est["well_conditioned"],
            # EM against the validation split's true class mix, from cells of bias-corrected probabilities
            # (a card without ``bcts``: temperature-scaled alone); absent for stats without cells
            "mlls_priors": mlls_priors(stats.cell_counts, stats.cell_prob_sums, np.asarray(joint).sum(axis=1)).tolist()
            if stats.has("cell_counts") else None}


def alerts(row: dict, max_error_ratio: float, cfg: MonitorConfig) -> list[dict]:
    """The alert rules of this module's docstring, applied to one monitoring row."""
    out = []
    if row["rows"] == 0:
        out.append(_alert("no_rows", "error", 0, 1, f"no image was scored ({row['errors']} undecodable)"))
    if row["error_ratio"] > max_error_ratio:
        out.append(_alert("error_ratio", "error", row["error_ratio"], max_error_ratio,
                          f"{row['errors']} undecodable images ({row['error_ratio']:.2%})"))
    out += _shift_alerts(row, cfg)
    if row["labelled"] >= cfg.min_labelled:
        out += _labelled_alerts(row, cfg)
    elif row["label_free_accuracy"] is not None and row["label_free_accuracy"] < (
        floor := row["reference_accuracy"] - cfg.label_free_drop
    ):
        out.append(_alert(
            "expected_accuracy_drop", "warning", row["label_free_accuracy"], floor,
            f"label-free accuracy estimate ({row['label_free_method']}) {row['label_free_accuracy']:.1%} is "
            f"below the reference {row['reference_accuracy']:.1%}{_cot_caveat(row, out)}",
        ))
    return out


def _largest_change(row: dict) -> str:
    worst = int(np.argmax(np.abs(row["share_deviation"])))
    return f"{row['classes'][worst]} {row['reference_share'][worst]:.1%} -> {row['share'][worst]:.1%}"


def _shift_alerts(row: dict, cfg: MonitorConfig) -> list[dict]:
    out, p = [], cfg.shift_p_value
    if row["history_p_value"] is not None and row["history_p_value"] < p \
            and row["history_js_distance"] >= cfg.shift_min_js:
        out.append(_alert("new_shift", "warning", row["history_p_value"], p,
                          f"tonight's class mix differs from the last {row['history_nights']} clean nights "
                          f"(JS distance {row['history_js_distance']:.3f}, p={row['history_p_value']:.1e})"))
    if row["sustained_p_value"] < p and row["js_distance"] >= cfg.shift_min_js:
        against = f"the mix accepted at run {row['accepted_run']}" if row.get("accepted_run") else "the reference"
        out.append(_alert("sustained_shift", "warning", row["sustained_p_value"], p,
                          f"class mix differs from {against} (JS distance {row['js_distance']:.3f}, "
                          f"p={row['sustained_p_value']:.1e}; largest change: {_largest_change(row)}); "
                          f"if this is the new normal: batchml monitor --accept-baseline {row['run_id']}"))
    # a changed class mix moves the per-class probabilities by itself: the outputs, compared with
    # the validation split's, alert only where the mix is the validation's (the reference's), so
    # neither tonight's shift nor an accepted new mix raises this alert too
    mix_as_reference = (row.get("model_reference_p_value", row["p_value"]) >= p
                        or row.get("model_reference_js_distance", row["js_distance"]) < cfg.shift_min_js)
    if not out and mix_as_reference and row.get("output_p_value") is not None and row["output_p_value"] < p \
            and row["output_ks"] >= cfg.output_min_ks:
        out.append(_alert("output_shift", "warning", row["output_p_value"], p,
                          f"the model's outputs differ from its validation split ({row['output_worst']} "
                          f"probabilities, KS {row['output_ks']:.3f}, p={row['output_p_value']:.1e} after "
                          "Bonferroni): covariate shift or corrupted images?"))
    if "cusum_up" in row and (hit := sequential.alarm([row["cusum_up"], row["cusum_down"]])):
        direction, k = hit
        state = (row["cusum_up"], row["cusum_down"])[direction][k]
        out.append(_alert("persistent_shift", "warning", state, sequential.THRESHOLD,
                          f"evidence accumulated over nights ({state:.1f} nats): {row['classes'][k]}'s share "
                          f"has moved {('up', 'down')[direction]} by about {sequential.RATIO}x from the "
                          "recent clean nights'"))
    return out


def _labelled_alerts(row: dict, cfg: MonitorConfig) -> list[dict]:
    out = []
    floor = row["reference_accuracy"] - cfg.accuracy_drop
    if row["accuracy_high"] < floor:
        out.append(_alert(
            "accuracy_drop", "error", row["accuracy"], floor,
            f"accuracy {row['accuracy']:.1%} (95% CI {row['accuracy_low']:.1%}-"
            f"{row['accuracy_high']:.1%}) is below the reference {row['reference_accuracy']:.1%}",
        ))
    expected, tol = row["label_free_accuracy"], cfg.divergence_tolerance
    if not row["accuracy_low"] - tol <= expected <= row["accuracy_high"] + tol:
        out.append(_alert(
            "accuracy_divergence", "warning", expected - row["accuracy"], tol,
            f"label-free estimate {expected:.1%} disagrees with measured accuracy {row['accuracy']:.1%}: "
            "the model's confidence no longer tracks its accuracy (concept drift?)",
        ))
    return out


def _cot_caveat(row: dict, raised: list[dict]) -> str:
    """What a COT reading assumed, and what says otherwise: COT counts a moved class mix as errors."""
    if row["label_free_method"] != "cot":
        return ""
    mix = f"accepted run {row['accepted_run']}'s" if row.get("accepted_run") else "the validation split's"
    atc = f", ATC {row['atc_accuracy']:.1%}" if row.get("atc_accuracy") is not None else ""
    moved = ("; the class mix moved too (above), which COT reads as errors"
             if any(a["kind"] in ("new_shift", "sustained_shift", "persistent_shift") for a in raised) else "")
    return f" (COT against {mix} class mix{atc}{moved})"


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
        estimates = _label_free_estimates(r, (("COT", "cot_accuracy"), ("ATC", "atc_accuracy"),
                                              ("calibrated confidence", "expected_accuracy")))
        lines.append(f"label-free accuracy estimates: {estimates} (alerts use {r['label_free_method']})")
    if not r["rows"]:  # nothing scored: no mix, outputs or shares to show
        return "\n".join(lines + [_alert_line(a) for a in report.alerts])
    history = (f"; vs last {r['history_nights']} clean nights: p-value {r['history_p_value']:.3g}"
               if r["history_p_value"] is not None else "")
    against = f"accepted run {r['accepted_run']}" if r.get("accepted_run") else "reference"
    lines.append(f"class mix vs {against}: JS distance {r['js_distance']:.4f}, "
                 f"chi2 {r['chi2']:.1f}, p-value {r['sustained_p_value']:.3g}{history}")
    if r.get("output_p_value") is not None:
        lines.append(f"outputs vs validation: KS {r['output_ks']:.3f} ({r['output_worst']}), "
                     f"p-value {r['output_p_value']:.3g} (Bonferroni)")
    if r.get("cusum_up"):
        lines.append(f"accumulated evidence (CUSUM): {max(max(r['cusum_up']), max(r['cusum_down'])):.1f} "
                     f"of {sequential.THRESHOLD:.0f} nats")
    width = max(len(c) for c in r["classes"])
    # the class's estimated true share by BBSE and by MLLS/EM (each absent where the card or stats predate it)
    heads = ("share", "ref", "BBSE", "MLLS", "recall", "prec.")
    lines.append(f"  {'class':<{width}}  " + "  ".join(f"{h:>6}" for h in heads))
    for i, c in enumerate(r["classes"]):
        est = (f"{r[key][i]:6.1%}" if r.get(key) is not None else f"{'-':>6}"
               for key in ("estimated_priors", "mlls_priors"))
        rec, prec = (f"{v:6.2f}" if v is not None else f"{'-':>6}" for v in (r["recall"][i], r["precision"][i]))
        lines.append(f"  {c:<{width}}  {r['share'][i]:6.1%}  {r['reference_share'][i]:6.1%}  {'  '.join(est)}  "
                     f"{rec}  {prec}")
    lines += [_alert_line(a) for a in report.alerts or [{"severity": "ok", "kind": "", "message": "no alerts"}]]
    return "\n".join(lines)


def _label_free_estimates(summary: dict, named: tuple[tuple[str, str], ...]) -> str:
    """"COT 0.8123, ATC 0.8201": the estimates a summary or row has (older ones lack some)."""
    return ", ".join(f"{name} {summary[key]:.4f}" for name, key in named if summary.get(key) is not None)


def _alert_line(a: dict) -> str:
    # the kind goes last: nightly logs are searched for "ERROR: " and "WARNING: "
    kind = f" [{a['kind']}]" if a["kind"] else ""
    return f"{a['severity'].upper()}: {a['message']}{kind}"
