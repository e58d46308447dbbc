"""A run's statistics folded into its ``MonitoringRow``: every measurement the rules read.

``fold_run`` sums a committed run's partition statistics; ``build_row`` measures them against the
model's card and what earlier nights tell (``monitoring.baseline``): accuracy, the label-free
estimates, the class mix against the reference and the recent nights, the outputs, the estimated
true mix. The CUSUM sums come after the single-night rules (``baseline.with_cusum``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from scipy.stats import chi2 as chi2_dist

from batchml import layout
from batchml.errors import BatchmlError
from batchml.integrity import read_stats
from batchml.labels import LabelSources, label_sources, late_delta, realized
from batchml.monitoring.baseline import Baseline
from batchml.monitoring.classes import drop_p_values, per_class_metrics
from batchml.monitoring.history import history_shift
from batchml.monitoring.inputs import discount_novel, input_shift, novelty
from batchml.monitoring.label_free import CotReference, atc_accuracy, output_shift
from batchml.monitoring.label_shift import bootstrap_priors, estimate_priors, mlls_priors
from batchml.monitoring.shift import class_shift, degrees_of_freedom, wilson_interval
from batchml.records import ModelCard, MonitoringRow, RunManifest
from batchml.stats import BiasCorrection, PartitionStats
from batchml.store import Store


def fold_run(store: Store, run_id: str) -> tuple[RunManifest, PartitionStats]:
    """A committed run's manifest and the sum of its partition statistics, with the deltas of its
    committed batches of late labels (``batchml.labels``): the predictions are never rescanned."""
    if not store.exists(layout.run_path(run_id, layout.RUN_MANIFEST)):
        hint = ("it is not committed yet: rerun `batchml score --run-id " + run_id + "` to finish it"
                if store.exists(layout.run_path(run_id, layout.RUN_SPEC)) else "no such run")
        raise BatchmlError(f"run {run_id!r} in {store.url()}: {hint}")
    manifest = RunManifest.read(store, run_id)
    k = len(manifest.classes)
    parts = [PartitionStats.from_dict(read_stats(store, run_id, p["partition"]).stats)  # damaged: named
             for p in manifest.partitions]
    return manifest, PartitionStats.total(parts, k) + late_delta(store, run_id, k)


def segment_by(store: Store, run: RunManifest) -> str | None:
    """The column (or path capture) the run was segmented by; None for a run without segments."""
    if not run.partitions:
        return None
    return read_stats(store, run.run_id, run.partitions[0]["partition"]).extra.get("segment_by")


def summarise(stats: PartitionStats, classes: list[str], atc_threshold: float | None = None,
              cot: CotReference | None = None, card: ModelCard | None = None) -> dict:
    """The labelled-sample statistics of any sum of partitions (a run, or a date range) with the
    label-free estimates: COT (given what it needs, ``cot``), ATC (the card's threshold) and
    calibrated confidence; the first present is ``label_free_accuracy``. Given the ``card``, novel
    images beyond the validation split's rate count as wrong in each estimate."""
    labelled = stats.labelled
    expected = stats.calibrated_confidence_sum / stats.rows if stats.rows else None
    estimates = {"cot": cot.accuracy(stats) if cot else None, "atc": atc_accuracy(stats, atc_threshold),
                 "confidence": expected}
    if card is not None:
        estimates = {m: discount_novel(v, stats, card) for m, v in estimates.items()}
        expected = estimates["confidence"]
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
        # the summed statistics, so that rows fold over any range of nights; segments have rows of their own
        **{k: v for k, v in stats.to_dict().items() if k not in ("rows", "errors", "labelled", "correct", "segments")},
        **per_class_metrics(stats.confusion),
    }


def summarise_rows(rows, classes: list[str], atc_threshold: float | None = None) -> dict:
    """Fold monitoring rows (a DataFrame: runs over a date range, say) exactly, as their statistics
    add up."""
    parts = [PartitionStats.from_dict({"num_classes": len(classes), **r}) for r in rows.to_dict("records")]
    return summarise(PartitionStats.total(parts, len(classes)), classes, atc_threshold)


def build_row(run: RunManifest, stats: PartitionStats, card: ModelCard, baseline: Baseline | None = None,
              duplicated: dict | None = None, segment: str | None = None, segment_by: str | None = None,
              labels: LabelSources | None = None) -> MonitoringRow:
    """The monitoring row of one run (or of one ``segment`` of it) from its summed statistics, its
    model's card, what earlier nights tell, its duplicates (``duplicates.duplicates``) and where its
    labels came from (default: at ingest, if any), before the CUSUM (``baseline.with_cusum``). The
    class-mix tests count each copy within tonight once. Pure: benchmarks call it too."""
    baseline = baseline or Baseline()
    labels = labels or label_sources(run, [])
    reference, accepted = card.reference, baseline.accepted
    ref_counts = np.asarray(accepted.predicted_counts if accepted else reference.predicted_counts)
    counts = np.asarray(duplicated["predicted_counts_unique"]) if duplicated else stats.predicted_counts
    row = {
        "run_id": run.run_id,
        "dataset": run.dataset,
        "model_version": run.model_version,
        "committed_at": run.committed_at,
        "monitored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "max_error_ratio": run.max_error_ratio,
        "reference_accuracy": reference.accuracy,
        "accepted_run": accepted.run_id if accepted else None,
        "segment": segment,
        "segment_by": segment_by,
        **summarise(stats, run.classes, card.atc_threshold, cot_reference(card, baseline), card),
        **class_shift(counts, ref_counts),
        **(history_shift(baseline.history, counts) or {"history_nights": len(baseline.history)}),
        **output_shift(stats, card.atc or {}),
        **(_label_shift(card, stats) if segment is None else {}),  # the bootstrap is the run's
        **_class_performance(card, stats, baseline),
        **input_shift(stats, card),
        **novelty(stats, card),
        **(duplicated or {}),
        **realized(stats, labels.sampling),
        "label_batches": labels.batches,
        "label_sampling": list(labels.sampling),
    }
    row["sustained_p_value"] = _sustained_p(row)
    # the mix against the model's own reference, whatever was accepted since: the output test
    # compares with the validation split, whose mix that is
    own = class_shift(counts, np.asarray(reference.predicted_counts)) if accepted else row
    row["model_reference_p_value"], row["model_reference_js_distance"] = own["p_value"], own["js_distance"]
    return MonitoringRow.written(row)


def _sustained_p(row: dict) -> float:
    """The reference test with the baseline's overdispersion (1 without a baseline)."""
    phi = row.get("history_dispersion") or 1.0
    df = degrees_of_freedom(np.asarray(row["share"]) + np.asarray(row["reference_share"]))
    return float(chi2_dist.sf(row["chi2"] / phi, df))


def _validation_mix(card: ModelCard) -> np.ndarray:
    """The true class mix of the model's validation split: the mix its probabilities are calibrated under."""
    counts = np.asarray(card.metrics.validation.confusion, dtype=np.float64).sum(axis=1)
    return counts / counts.sum()


def cot_reference(card: ModelCard, baseline: Baseline) -> CotReference | None:
    """What COT needs for tonight. The expected mix is the validation split's, or once a run is
    accepted, its estimated true mix averaged with the clean nights' since (one night's estimate is
    noisy, and each point of error in it reads as errors every night). None for cards without the
    bias-corrected calibration: COT on temperature-scaled cells reads clean nights two to three
    points low, so they keep ATC."""
    if not card.calibration or not card.calibration.bcts:
        return None
    calibrated, accepted = _validation_mix(card), baseline.accepted
    expected = calibrated
    if accepted:
        expected = np.mean([accepted.expected_mix(), *baseline.mixes], axis=0)
    return CotReference(expected, calibrated, card.validation_rows, BiasCorrection.from_dict(card.calibration.bcts))


MIN_RECENT_LABELLED = 2000  # fewer labelled rows over the recent clean nights: compare with the card alone


def _class_performance(card: ModelCard, stats: PartitionStats, baseline: Baseline) -> dict:
    """Each class's recall and precision tonight against the card's reference split and, once the
    recent clean nights hold enough labelled rows, against them too: a class must have dropped
    against both (the larger p-value), so that a reference the nights never matched stays quiet."""
    split = card.metrics.test or card.metrics.validation if card.metrics else None
    if split is None or split.confusion is None or not stats.labelled:
        return {}
    reference = np.asarray(split.confusion)
    p = drop_p_values(stats.confusion, reference)
    recent = baseline.confusion
    if recent is not None and recent.sum() >= MIN_RECENT_LABELLED and recent.shape == reference.shape:
        q = drop_p_values(stats.confusion, recent)
        p = {k: [None if a is None or b is None else max(a, b) for a, b in zip(p[k], q[k], strict=True)] for k in p}
    else:
        recent = None
    return {"reference_confusion": reference.tolist(), "recent_confusion": None if recent is None else recent.tolist(),
            **p}


def _label_shift(card: ModelCard, stats: PartitionStats) -> dict:
    """Estimated true class mix: soft BBSE with its interval, and MLLS/EM beside it; each absent
    where the card or the statistics lack what it needs."""
    joint = card.metrics.validation.prob_confusion
    if joint is None or stats.rows == 0:
        return {}
    mu = stats.prob_sums / stats.rows
    est = estimate_priors(np.asarray(joint), mu, stats.rows)
    rows = card.validation_rows
    # the bootstrap needs the validation rows; cards without them keep the normal approximation
    low, high = bootstrap_priors(rows, mu, stats.rows) if rows else (est["priors_low"], est["priors_high"])
    return {"estimated_priors": est["priors"], "estimated_priors_low": low, "estimated_priors_high": high,
            "estimated_priors_interval": "bootstrap" if rows else "normal",
            "bbse_condition_number": est["condition_number"], "bbse_well_conditioned": est["well_conditioned"],
            # EM against the validation split's true class mix, from cells of bias-corrected probabilities
            # (a card without ``bcts``: temperature-scaled alone); absent for stats without cells
            # (None where a cell's probabilities are not finite: no estimate, not a crash)
            "mlls_priors": None if not stats.has("cell_counts") or (mlls := mlls_priors(
                stats.cell_counts, stats.cell_prob_sums, np.asarray(joint).sum(axis=1))) is None else mlls.tolist()}
