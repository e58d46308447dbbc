"""The records under the store root, one class each: every file a stage writes (a dataset
manifest, a run's start and manifest, a scored partition, a model card, aliases, a sweep) and
the rows of the monitoring tables (where they live: ``batchml.layout``).

Each has ``to_dict`` (what is written) and ``from_dict`` (what is read), and is read by
attribute. ``schema_version`` counts changes of shape: files written before records had it
read as version 0, and ``_upgrade`` turns an older shape into the current one, the one place
per record that knows older shapes. A key older writers lacked reads as None; keys a newer
writer added are kept in ``extra`` and written back, so an older reader loses nothing.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import pyarrow as pa

from batchml import layout
from batchml.errors import BatchmlError


class _Record:
    """``to_dict``/``from_dict`` for a dataclass with ``extra`` and, where it is a whole file or
    table row, ``schema_version``. ``PARTS`` names the fields that hold a nested record."""

    SCHEMA_VERSION: ClassVar[int] = 1
    PARTS: ClassVar[dict[str, type[_Record]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out = {name: _plain(getattr(self, name)) for name in self.columns()}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The record of a file or table row as read; an older shape is upgraded first (``_upgrade``)."""
        names = cls.columns()
        versioned = "schema_version" in names
        version = _version(data.get("schema_version")) if versioned else cls.SCHEMA_VERSION
        if version < cls.SCHEMA_VERSION:
            data = cls._upgrade(dict(data), version)
        # a key older writers lacked reads as None, as does the NaN a table fills into their rows
        known = {name: None if is_absent(v := data.get(name)) else v for name in names}
        if versioned:
            known["schema_version"] = version  # as written: 0 for files written before records had one
        for name, part in cls.PARTS.items():
            if isinstance(known[name], dict):
                known[name] = part.from_dict(known[name])
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def _upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """``data`` written at an older ``version`` in this version's shape. A record whose shape
        changed overrides this; it is the only code that knows the older shapes. It may be given its
        own output again (a record keeps the version it was read as, so one written back unchanged
        reads as that version): leave a shape already upgraded as it is."""
        return data

    @classmethod
    def written(cls, data: dict[str, Any]):
        """The record this code writes now, of the current schema version."""
        return cls.from_dict({**data, "schema_version": cls.SCHEMA_VERSION})

    @classmethod
    def columns(cls) -> list[str]:
        """The keys this record knows, in the order they are written."""
        return [f.name for f in fields(cls) if f.name != "extra"]


def is_absent(value: Any) -> bool:
    """A value a reader treats as missing: None, or the NaN a table fills into rows that lack a column."""
    return value is None or (isinstance(value, float) and value != value)


def _version(value: Any) -> int:
    """The schema version a file says it has: 0 where it says none (absent, None, a table's NaN)."""
    return int(value) if isinstance(value, numbers.Real) and not is_absent(value) else 0  # numpy's too


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, _Record) else value


@dataclass
class DatasetManifest(_Record):
    """``images/<dataset>/dataset.json``, written last by ingest: the dataset is committed."""

    name: str
    source: str  # a description of where the images came from
    split: str  # train | test
    classes: list[str]  # class names in label order
    partition_size: int  # images per partition (the last may hold fewer)
    partitions: list[dict]  # per partition: name, rows, labelled, sha256 (of ids, bytes and labels)
    rows: int
    labelled: int
    fingerprint: str  # sha256 over the partitions' hashes: any change of content changes it
    created_at: str  # UTC, ISO 8601
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)


@dataclass
class RunStart(_Record):
    """``runs/<run_id>/run.json``, written first by scoring: it ties the run id to its input and
    model, so that a resumed run scores the same images with the same version."""

    run_id: str
    dataset: str  # the dataset name, or the prefix URL of raw files
    input: str  # dataset | images
    dataset_fingerprint: str  # a prefix's covers its listing and its cut into partitions
    partition_size: int | None  # a prefix's files per partition; None for a dataset's own partitions
    model_version: str  # NAME/vN (``batchml.layout.ModelVersion.parse``)
    model_ref: str  # as asked: a version or an alias
    created_at: str  # UTC, ISO 8601
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, store, run_id: str) -> RunStart:
        """The run's start record (``store``: a ``batchml.store.Store``)."""
        return cls.from_dict(store.read_json(layout.run_path(run_id, layout.RUN_SPEC)))


@dataclass
class RunManifest(_Record):
    """``runs/<run_id>/manifest.json``, written last by scoring: the run is committed. It repeats
    ``run.json`` (what the run scores) and adds what came out."""

    run_id: str
    dataset: str  # the dataset name, or the prefix URL of raw files
    input: str  # dataset | images
    dataset_fingerprint: str
    partition_size: int | None  # a prefix's files per partition; a dataset's partitions are its own
    model_version: str  # NAME/vN (``batchml.layout.ModelVersion.parse``)
    model_ref: str  # as asked: a version or an alias
    created_at: str  # when the run started (UTC)
    classes: list[str]
    batch_size: int | str  # as asked, or "auto"; per partition: the size that fitted
    max_error_ratio: float
    rows: int  # predictions
    errors: int  # undecodable images
    labelled: int
    batch_sizes_used: list[int]
    devices: list[dict]  # where the partitions were computed: backend, device, framework versions
    partitions: list[dict]  # per partition: partition, rows, errors, batch_size, seconds, worker
    wall_seconds: float
    images_per_second: float | None  # of the partitions scored by this attempt; None if none were
    committed_at: str  # UTC, ISO 8601 with milliseconds
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, store, run_id: str) -> RunManifest:
        """The committed run's manifest (``store``: a ``batchml.store.Store``); a torn one is a
        ``DamagedFileError`` naming it and the repair."""
        from batchml.integrity import DamagedFileError, read_json

        rel = layout.run_path(run_id, layout.RUN_MANIFEST)
        data = read_json(store, rel)
        try:
            return cls.from_dict(data)
        except (AttributeError, TypeError) as exc:  # not an object, or keys of another shape
            raise DamagedFileError(store.url(rel), f"not a run manifest: {exc}") from None


@dataclass
class ScoredPartition(_Record):
    """``runs/<run_id>/stats/part-N.json``, written last for a partition by scoring: the partition
    is done. Its statistics are what monitoring folds; the rest says how it was computed."""

    partition: str  # the input partition's name, part-NNNNN.parquet
    rows: int  # predictions
    errors: int  # undecodable images
    batch_size: int | None  # images per predict call, as fitted on the device
    stats: dict  # ``batchml.stats.PartitionStats.to_dict``: the mergeable statistics
    seconds: dict[str, float]  # per stage: read, decode, load, queue, predict, write
    worker: str  # host:pid
    device: dict | None  # where it was computed (``batchml.device.device_info``)
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, store, run_id: str, partition: str) -> ScoredPartition:
        """A scored partition of the run (``store``: a ``batchml.store.Store``)."""
        return cls.from_dict(store.read_json(layout.run_stats(run_id, partition)))


# -- the model card ------------------------------------------------------------------------------


@dataclass
class Evaluation(_Record):
    """A labelled split's metrics in the card (``metrics.validation``, ``metrics.test``)."""

    rows: int
    accuracy: float
    loss: float  # mean negative log-likelihood of the true class
    confusion: list[list[int]]  # (K, K) true x predicted counts
    prob_confusion: list[list[float]] | None  # (K, K) true class x summed probabilities (BBSE); None: older cards
    extra: dict = field(default_factory=dict)


@dataclass
class Metrics(_Record):
    """The card's ``metrics``."""

    PARTS: ClassVar[dict] = {"validation": Evaluation, "test": Evaluation}

    validation: Evaluation  # the split held out of the training dataset (by hash of image_id)
    test: Evaluation | None  # the test dataset, touched once; None without one, and on a sweep's trials
    extra: dict = field(default_factory=dict)


@dataclass
class Calibration(_Record):
    """Temperature scaling, fitted on the validation split (``batchml.train.calibration``)."""

    temperature: float  # calibrated probabilities: softmax(log p / temperature)
    validation_nll_before: float
    validation_nll_after: float
    # bias-corrected temperature scaling (``batchml.stats.BiasCorrection.to_dict``): the MLLS/EM and
    # COT cells are summed from it; None on cards before it
    bcts: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Fit(_Record):
    """The learning curves' verdict (``batchml.train.diagnostics.fit_verdict``)."""

    verdict: str  # good fit | over-fitting | under-fitting
    reason: str  # why, and what to do
    train_validation_gap: float  # last epoch's training minus validation accuracy
    best_validation_loss_epoch: int  # 1-based
    validation_loss_rise: float  # last validation loss above its minimum, as a share of it
    last_epoch_validation_gain: float  # validation accuracy gained in the last epoch
    extra: dict = field(default_factory=dict)


@dataclass
class TrainingData(_Record):
    """What the model learned from and was tested on (fingerprints: ``DatasetManifest``)."""

    dataset: str
    fingerprint: str
    test_dataset: str | None
    test_fingerprint: str | None  # set when the test set is used, after training
    extra: dict = field(default_factory=dict)


@dataclass
class Reference(_Record):
    """What monitoring compares nights with: the model's predictions on a labelled split."""

    split: str  # test where training had a test set, else validation
    dataset: str
    rows: int
    predicted_counts: list[int]  # (K,) rows predicted as each class: the reference class mix
    accuracy: float  # the reference accuracy alerts measure drops from
    extra: dict = field(default_factory=dict)


@dataclass
class ModelCard(_Record):
    """``models/<name>/<version>/card.json``, written after the model: the version is committed.
    Written by training (``batchml.train.training``, a sweep's best trial), read by scoring,
    monitoring, the CLI and the dashboard."""

    PARTS: ClassVar[dict] = {"data": TrainingData, "metrics": Metrics, "fit": Fit, "calibration": Calibration,
                             "reference": Reference}

    name: str | None  # the registered model name, set by the registry (None on a sweep trial's card)
    version: str | None  # vN, set by the registry
    created_at: str  # when training ended (UTC, ISO 8601)
    arch: str  # architecture (``batchml.train.architectures``); a warm start keeps its parent's
    classes: list[str]  # class names in label order: the model's outputs
    preprocessing: dict  # how image bytes become its input (``batchml.data.images.Preprocessing.to_dict``)
    parameters: int  # weights in the net
    # free-form: the TrainConfig, the recipe's values used (keys: ``batchml.train.recipes``), the
    # learning rate used, parent, backend, device, seconds, rows, and ``sweep`` for a sweep's best
    training: dict
    data: TrainingData
    metrics: Metrics
    learning_curves: dict[str, list[float]]  # per epoch, as Keras names them: loss, accuracy, val_loss, val_accuracy
    fit: Fit
    calibration: Calibration
    # label-free monitoring: ATC score and threshold, validation histograms
    # (``batchml.reference.atc_reference``); None on cards before it
    atc: dict | None
    # the validation probabilities and labels, encoded (``batchml.reference.encode_rows``):
    # BBSE's bootstrap resamples them; None on cards before it
    validation_rows: dict | None
    reference: Reference
    # novelty (``batchml.train.novelty.NoveltyReference.card_entry``): method, threshold, quantile,
    # validation_rate, validation_hist, edges; its arrays in ``novelty.npz`` beside the card. None: before it
    novelty: dict | None = None
    # input health of the training split (``batchml.reference.health_reference``): the histograms
    # ``PartitionStats`` keeps, summed over a sample of the training rows. None: before it
    input_health: dict | None = None
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def checked(cls, data: Any, where: str, needs: tuple[str, ...] = ()) -> ModelCard:
        """The card read from ``where``, refused with the reason where it is not an object, is a newer
        release's, or lacks the parts in ``needs`` (``SCORING_NEEDS``, ``MONITORING_NEEDS``)."""
        if not isinstance(data, dict):
            problem = f"holds a {type(data).__name__}, not a card"
        elif not isinstance(version := data.get("schema_version", 0), int) or version > cls.SCHEMA_VERSION:
            raise BatchmlError(f"{where} is of card schema {version!r}, newer than this batchml reads "
                               f"({cls.SCHEMA_VERSION}): upgrade batchml")
        else:
            problem = _card_problem(data, needs)
        if problem:
            raise BatchmlError(f"{where} {problem}: the card is damaged; restore it, or retrain the model")
        return cls.from_dict(data)

    @property
    def test_accuracy(self) -> float | None:
        """None where the model was not tested."""
        return self.metrics.test.accuracy if self.metrics and self.metrics.test else None

    @property
    def atc_threshold(self) -> float | None:
        """The ATC threshold; None on cards written before ATC (monitoring falls back to confidence)."""
        return (self.atc or {}).get("threshold")

    @property
    def training_seconds(self) -> float:
        return self.training["seconds"]

    @property
    def device(self) -> dict:
        """Where it trained: backend, device kind and name, framework versions (``batchml.device``)."""
        return self.training["device"]


def _card_problem(data: dict, needs: tuple[str, ...]) -> str:
    """What is wrong with the parts of a card's shape in ``needs`` ("" if nothing)."""
    classes, k = data.get("classes"), len(data.get("classes") or [])
    checks = {
        "classes": (isinstance(classes, list) and k > 0 and all(isinstance(c, str) for c in classes),
                    "'classes' must be a non-empty list of class names"),
        "preprocessing": (isinstance(data.get("preprocessing"), dict), "'preprocessing' must be an object"),
        "calibration": (isinstance(data.get("calibration"), dict)
                        and isinstance(data["calibration"].get("temperature"), int | float),
                        "'calibration.temperature' must be a number"),
        "metrics": (isinstance(data.get("metrics"), dict) and isinstance(data["metrics"].get("validation"), dict),
                    "'metrics.validation' must be an object"),
        "reference": (isinstance(data.get("reference"), dict)
                      and isinstance(data["reference"].get("accuracy"), int | float)
                      and len(data["reference"].get("predicted_counts") or []) == k,
                      "'reference' must hold 'accuracy' and one 'predicted_counts' per class"),
    }
    return next((what for ok, what in (checks[n] for n in needs) if not ok), "")


SCORING_NEEDS = ("classes", "preprocessing", "calibration")  # what scoring reads of a card
MONITORING_NEEDS = (*SCORING_NEEDS, "metrics", "reference")  # and monitoring


# -- aliases and sweeps ---------------------------------------------------------------------------


@dataclass
class Aliases(_Record):
    """``models/<name>/aliases.json``: which version each alias (e.g. ``production``) points at."""

    aliases: dict[str, str]  # alias -> version tag (vN); empty where nothing was promoted
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.aliases = self.aliases or {}

    @classmethod
    def _upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        # version 0 (written before records had a version) was the mapping itself: alias -> "vN"
        return data if isinstance(data.get("aliases"), dict) else {"aliases": data}

    @classmethod
    def read(cls, store, name: str) -> Aliases:
        """The model's aliases (``store``: a ``batchml.store.Store``)."""
        rel = layout.aliases_path(name)
        return cls.from_dict(store.read_json(rel)) if store.exists(rel) else cls.written({})


@dataclass
class Sweep(_Record):
    """``sweeps/<sweep_id>/sweep.json`` (``batchml.train.sweep``): the plan, written when the sweep
    starts, then with its result once the best trial is registered. Its trials' rows are a table
    beside it (``layout.SWEEP_TRIALS``)."""

    RESULT: ClassVar[tuple[str, ...]] = ("best_trial", "best_params", "best_validation_accuracy", "registered",
                                         "test_accuracy", "finished_at")

    sweep_id: str
    base: dict  # the ``TrainConfig`` every trial starts from, as ``dataclasses.asdict`` writes it
    space: dict[str, list]  # hyperparameter -> the values to try
    trials: list[dict]  # each trial's values, in trial order
    # the result: None until the sweep is finished (and then left out of the file)
    best_trial: int | None = None
    best_params: dict | None = None
    best_validation_accuracy: float | None = None
    registered: str | None = None  # the version the best trial became (NAME/vN)
    test_accuracy: float | None = None  # None without a test dataset
    finished_at: str | None = None  # UTC, ISO 8601
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # an unfinished plan has no result keys, as the releases before records wrote it: they take
        # a plan with "registered" for a finished sweep
        return {k: v for k, v in super().to_dict().items() if v is not None or k not in self.RESULT}

    @property
    def finished(self) -> bool:
        return self.registered is not None


# -- failure cases ---------------------------------------------------------------------------------

FAILURES_KEPT = 24  # images of each kind per run (and per partition)
# ``runs/<id>/failures/part-N.parquet`` (a partition's candidates) and, with ``true_class`` and
# ``predicted_class`` added, ``monitoring/failures/<run_id>.parquet`` (the run's snapshot)
FAILURE_SCHEMA = pa.schema([
    ("kind", pa.string()),  # misclassified (labelled, most confident first) | uncertain (unlabelled, least)
    ("image_id", pa.string()), ("partition", pa.string()), ("label", pa.int16()),
    ("predicted", pa.int16()), ("confidence", pa.float32()), ("thumbnail", pa.binary()),  # 32x32 PNG
])


# ``runs/<id>/hashes/part-N.parquet``: one row per prediction, for duplicates within a run and against
# recent nights (``batchml.data.health``: ``content_hashes``, ``dhash``, ``hamming``)
HASHES_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("content_hash", pa.uint64()),  # BLAKE2b of the bytes as received: equal for exact duplicates
    ("perceptual_hash", pa.uint64()),  # dHash of the model input: near duplicates differ in few bits
    ("predicted", pa.int16()),  # the predicted class, for de-duplicated class mixes
    ("segment", pa.string()),  # the row's segment value; null when the run is not segmented
])


# -- the monitoring tables -----------------------------------------------------------------------


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
