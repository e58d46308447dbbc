"""What monitoring reads and writes besides the runs: the failure-case table, the rows of the
monitoring tables (runs, alerts), and an accepted baseline (where they live: ``batchml.layout``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from batchml.records.base import _Record

FAILURES_KEPT = 24  # images of each kind per run (and per partition)
# ``runs/<id>/failures/part-N.parquet`` (a partition's candidates) and, with ``true_class`` and
# ``predicted_class`` added, ``monitoring/failures/<run_id>.parquet`` (the run's snapshot)
FAILURE_SCHEMA = pa.schema([
    # misclassified (labelled, most confident first) | uncertain (unlabelled, least) | novel (most novel first;
    # ``confidence`` holds the novelty score) | duplicate (a copy of an image scored before it)
    ("kind", pa.string()),
    ("image_id", pa.string()), ("partition", pa.string()), ("label", pa.int16()),
    ("predicted", pa.int16()), ("confidence", pa.float32()), ("thumbnail", pa.binary()),  # 32x32 PNG
])


@dataclass
class MonitoringRow(_Record):
    """A row of ``monitoring/runs/<run_id>.parquet``: one monitored run
    (``batchml.monitoring.row.build_row``). Columns a newer writer added are kept in
    ``extra`` and written back; rows written before a column existed read it as None (or NaN)."""

    run_id: str
    dataset: str  # the dataset name, or the prefix URL of raw files
    model_version: str  # NAME/vN
    committed_at: str  # the run's commit time (UTC): the nights' order
    monitored_at: str  # when this row was written (UTC)
    reference_accuracy: float  # the card's reference accuracy
    max_error_ratio: float | None  # the share of undecodable images the run allowed; None on rows before it
    accepted_run: str | None  # the run whose class mix was accepted as the baseline, if any
    # the labelled-sample statistics (``monitoring.row.summarise``)
    rows: int  # predictions
    errors: int  # undecodable images
    error_ratio: float  # errors / (rows + errors)
    labelled: int
    correct: int
    accuracy: float | None  # None without labelled rows
    accuracy_low: float | None  # 95% Wilson interval
    accuracy_high: float | None
    mean_confidence: float | None  # mean top probability
    expected_accuracy: float | None  # mean calibrated top probability: a label-free estimate
    atc_accuracy: float | None  # ATC's estimate; None for cards without a threshold
    cot_accuracy: float | None  # COT (``monitoring.label_free``); None for older cards or stats
    label_free_accuracy: float | None  # the estimate the alerts use: the first of COT, ATC, expected
    label_free_method: str | None  # cot | atc | confidence
    classes: list[str]
    # the run's summed ``batchml.stats.PartitionStats``: rows fold exactly over any range of nights
    num_classes: int
    predicted_counts: list[int]
    confusion: list[list[int]]
    prob_sums: list[float]
    confidence_hist: list[int]
    confidence_sum: float
    calibrated_confidence_sum: float
    score_hist: list[int]
    class_prob_hist: list[list[int]]
    cell_counts: list[list[int]]  # (K, bins) rows per predicted class and top-probability bin
    cell_prob_sums: list[list[list[float]]]  # (K, bins, K) their summed bias-corrected probabilities
    # per class, from the confusion matrix (``monitoring.classes``); None where undefined
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    fpr: list[float | None]
    fnr: list[float | None]
    support: list[int]  # labelled rows of each true class
    # the class mix against the reference, or the accepted run's mix (``monitoring.shift.class_shift``)
    chi2: float
    p_value: float
    js_distance: float  # Jensen-Shannon distance, base 2
    share: list[float]  # tonight's predicted class shares
    reference_share: list[float]
    share_deviation: list[float]  # share minus reference share
    # the class mix against recent clean nights (``monitoring.history``); None with too little history
    history_nights: int
    history_chi2: float | None
    history_dispersion: float | None
    history_p_value: float | None
    history_js_distance: float | None
    # the outputs against the validation split's (``monitoring.label_free.output_shift``)
    output_p_value: float | None  # Bonferroni-corrected; None for cards or stats without histograms
    output_ks: float | None
    output_worst: str | None  # which histogram: score, or class N
    # the estimated true class mix, BBSE (``monitoring.label_shift``); None for cards without its matrix
    estimated_priors: list[float] | None
    estimated_priors_low: list[float] | None
    estimated_priors_high: list[float] | None
    estimated_priors_interval: str | None  # bootstrap | normal
    bbse_condition_number: float | None
    bbse_well_conditioned: bool | None
    mlls_priors: list[float] | None  # the estimated true class mix by MLLS/EM; None for stats without cells
    sustained_p_value: float  # the reference test with the baseline's overdispersion
    model_reference_p_value: float  # the mix against the model's own reference, whatever was accepted
    model_reference_js_distance: float
    # per-class performance on the labelled rows (``monitoring.classes.drop_p_values``); None without labels
    reference_confusion: list[list[int]] | None  # (K, K) the card's reference split
    recent_confusion: list[list[int]] | None  # (K, K) the recent clean nights' labelled rows; None: too few
    recall_p_value: list[float | None] | None  # (K,) one-sided, uncorrected: recall lower than both
    precision_p_value: list[float | None] | None  # (K,) likewise for precision
    # the CUSUM per class (``monitoring.sequential``)
    cusum_up: list[float]
    cusum_down: list[float]
    cusum_counted: bool  # whether tonight added evidence (not if it alarmed on its own, or without a baseline)
    alert_kinds: list[str] | None  # the kinds of alert this night raised; None on rows written before
    # where: a row of ``monitoring/segments/<run_id>.parquet`` is one segment value's; the run's own row
    # has segment None and names the column the run was segmented by
    segment: str | None
    segment_by: str | None
    # input health against the card's training split (``monitoring.inputs.input_shift``); None without it
    input_properties: list[str] | None
    input_ks: list[float] | None  # per property: KS distance of tonight's histogram from training's
    input_p_value: list[float] | None  # uncorrected
    input_median: list[float | None] | None
    input_reference_median: list[float | None] | None
    input_category_tv: list[float] | None  # mode, channels, format, EXIF orientation: total variation
    input_category_p_value: list[float] | None
    input_category_change: list[str] | None  # the largest change of each, in words
    # duplicates (``monitoring.duplicates``), from the runs' hashes files; None without them
    duplicate_within: int | None  # rows whose bytes repeat an earlier row tonight
    duplicate_recent: int | None  # rows whose bytes repeat a recent night's row
    near_duplicate: int | None  # near copies of an earlier row tonight (not exact)
    near_duplicate_method: str | None
    duplicate_example: str | None
    recent_nights_compared: int | None
    predicted_counts_unique: list[int] | None  # the class mix with each copy within tonight counted once
    # novel images (``monitoring.inputs.novelty``); None for cards or stats without novelty
    novel_share: float | None
    novel_reference_share: float | None  # the validation split's share above the threshold
    novel_p_value: float | None
    novelty_ks: float | None
    # late labels (``batchml.labels``); None on rows written before them
    labelled_hist: list[int] | None  # (bins,) labelled rows by bin of the top probability
    correct_hist: list[int] | None  # (bins,) of which predicted right
    label_coverage: float | None  # labelled / rows
    labels_needed: int | None  # labelled rows the label-based rules wait for (min_labelled, min_label_coverage)
    label_batches: int | None  # late batches folded in
    label_sampling: list[str] | None  # how the labels were drawn: ingest, random, uncertain, other
    # the night's accuracy as its labels tell it: the labelled rows' where they were drawn at random,
    # reweighted by confidence bin where some were drawn uncertain-first; None where the labels are
    # not representative (``realized_method``) or there are none
    realized_accuracy: float | None
    realized_accuracy_low: float | None  # 95% interval
    realized_accuracy_high: float | None
    realized_method: str | None  # labelled | reweighted | not representative
    # as the first monitoring of the run made them, kept when labels arrive later
    night_label_free_accuracy: float | None
    night_label_free_method: str | None
    night_alert_kinds: list[str] | None  # what the nightly baseline and the CUSUM read
    night_monitored_at: str | None
    label_free_error: float | None  # night_label_free_accuracy - realized_accuracy
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)


@dataclass
class Alert(_Record):
    """A row of ``monitoring/alerts/<run_id>.parquet`` (the rules: ``batchml.monitoring.rules``)."""

    run_id: str
    kind: str  # e.g. error_ratio, sustained_shift, accuracy_drop
    severity: str  # error (the monitor exits 1) | warning
    statistic: float  # the value that crossed the threshold
    threshold: float
    message: str  # what happened, and what to do
    cause: str | None = None  # what changed (``monitoring.rules.CAUSES``); None on alerts written before
    segment: str | None = None  # where: "COLUMN=VALUE[, VALUE...]"; None for the whole run
    rank: int | None = None  # 1: the most likely cause of the night's alerts
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)


@dataclass
class AcceptedBaseline(_Record):
    """``monitoring/accepted/<run_id>.json``: a monitored run whose class mix is the new normal of its
    model (``batchml monitor --accept-baseline``). The latest acceptance of a model wins."""

    run_id: str
    model_version: str  # NAME/vN
    committed_at: str  # the accepted run's commit time: nights from it on compare with its mix
    predicted_counts: list[int]  # (K,) its predicted class counts: the sustained_shift reference
    estimated_mix: list[float] | None  # (K,) its true mix (labels', else MLLS); None: not estimated
    note: str  # why, as the user said
    accepted_at: str  # UTC, ISO 8601 with microseconds: the latest wins
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def expected_mix(self) -> list[float]:
        """The true class mix COT expects from this run: estimated, else its predicted mix."""
        if self.estimated_mix:
            return list(self.estimated_mix)
        total = sum(self.predicted_counts)
        return [c / total for c in self.predicted_counts]
