"""The model card, ``models/<name>/<version>/card.json``, and its parts; what scoring and
monitoring need of it (``SCORING_NEEDS``, ``MONITORING_NEEDS``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from batchml.errors import BatchmlError
from batchml.records.base import _Record


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
