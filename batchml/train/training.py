"""Training as a Dask task: one worker reads the dataset from the store, trains, evaluates,
calibrates and registers a model version with its card.

The task sends progress events (topic ``batchml-train``) that the client prints.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, replace
from datetime import UTC, datetime

import numpy as np

from batchml import layout
from batchml.backend import count_gpus
from batchml.data import datasets
from batchml.data.images import Preprocessing
from batchml.device import cpu_fallback_warning, device_info, device_lock, training_precision
from batchml.errors import BatchmlError
from batchml.progress import Progress
from batchml.records import Calibration, Evaluation, Fit, Metrics, ModelCard, Reference, TrainingData
from batchml.reference import atc_reference, encode_rows, health_reference
from batchml.registry import ModelVersion, load_model, model_bytes, read_card, register, resolve
from batchml.stats import PartitionStats, scale_temperature
from batchml.store import Store, StoreConfig
from batchml.train.calibration import fit_bcts, fit_temperature, nll
from batchml.train.config import TrainConfig
from batchml.train.diagnostics import fit_verdict
from batchml.train.novelty import fit_novelty_on
from batchml.train.recipes import TUNABLE

TRAIN_TOPIC = "batchml-train"
WHITENING_SAMPLE = 2000  # training images whose 2x2 patches (1.9 million) set the fast net's whitening


def train(client, store: Store, cfg: TrainConfig, verbose: bool = True) -> tuple[ModelVersion, ModelCard]:
    """Run ``train_task`` on one worker of ``client``, printing its progress events."""
    from batchml.cluster import TRAIN_GPU_SHARE, gpu_resources

    cfg = check(store, cfg)
    progress = Progress(f"train {cfg.name}", total=cfg.recipe().epochs, unit="epochs", enabled=verbose)
    if verbose:
        client.subscribe_topic(TRAIN_TOPIC, lambda event: _show_event(event, progress))
    try:
        future = client.submit(train_task, store.config, cfg, pure=False,
                               resources=gpu_resources(client, TRAIN_GPU_SHARE))
        card = future.result()
    finally:
        if verbose:
            client.unsubscribe_topic(TRAIN_TOPIC)
        progress.close()
    return ModelVersion(card.name, card.version), card


def check(store: Store, cfg: TrainConfig) -> TrainConfig:
    """Fail on the client, not on a worker: unknown datasets, architecture or parent model.
    A warm start takes its parent's architecture; its version is pinned."""
    datasets.read_manifest(store, cfg.dataset)
    if cfg.test_dataset:
        datasets.read_manifest(store, cfg.test_dataset)
    if cfg.warm_start:
        mv = resolve(store, cfg.warm_start)
        cfg = replace(cfg, warm_start=str(mv), arch=read_card(store, mv).arch)
    cfg.recipe()  # an unknown --arch fails here
    return cfg


def train_task(store_cfg: StoreConfig, cfg: TrainConfig) -> ModelCard:
    """Train, evaluate, calibrate and register; returns the model card (runs on a worker,
    holding its device: a second task on the same worker waits rather than sharing it)."""
    store = Store(store_cfg)
    with device_lock():
        model, card = fit(store, cfg)
        return register_trained(store, cfg, model, card)


def register_trained(store: Store, cfg: TrainConfig, model, card: ModelCard) -> ModelCard:
    """Test metrics (the test set's one use), the reference distribution, then register."""
    if cfg.test_dataset:
        card.metrics.test, stats, card.data.test_fingerprint = _evaluate_test(store, cfg, card.classes, model)
        card.reference = _reference("test", cfg.test_dataset, stats)
    novelty = _novelty(store, cfg, model)
    card.novelty = novelty.card_entry() if novelty else None
    card.input_health = health_reference(store, cfg.dataset, cfg.validation_fraction)
    files = {layout.NOVELTY_FILE: novelty.to_bytes()} if novelty else None
    mv = register(store, cfg.name, model_bytes(model), card, files)
    _emit({"stage": "registered", "version": str(mv)})
    return replace(card, name=mv.name, version=mv.version)


def _novelty(store: Store, cfg: TrainConfig, model):
    """The novelty reference on the training and validation splits; None (with a warning) for a
    model whose features cannot be had: it scores without novelty. Any failure is a warning, not
    an error: the trained model is worth registering without it."""
    try:
        return fit_novelty_on(store, cfg.dataset, model, cfg.validation_fraction)
    except Exception as e:
        warnings.warn(f"training {cfg.name}: no novelty reference: {e}", stacklevel=2)
        return None


def fit(store: Store, cfg: TrainConfig, callbacks: tuple = ()) -> tuple[object, ModelCard]:
    """Train on ``cfg.dataset`` less its validation split; validate, calibrate, diagnose.

    Returns the model to save (with flip test-time augmentation where the recipe says so)
    and its card, without test metrics: ``register_trained`` adds them.
    """
    import keras

    from batchml.train.architectures import build, with_tta
    from batchml.train.learning import Batches, optimizer

    prep = Preprocessing()
    recipe = cfg.recipe()
    manifest = datasets.read_manifest(store, cfg.dataset)
    classes = manifest.classes
    _emit({"stage": "loading", "dataset": cfg.dataset, "rows": manifest.rows})
    x, y, ids, skipped = datasets.load_labelled(store, cfg.dataset, prep)
    val = datasets.in_validation(ids, cfg.validation_fraction)
    if val.all() or not val.any():
        raise BatchmlError(
            f"dataset {cfg.dataset!r} ({len(ids)} images) is too small to hold out a "
            f"{cfg.validation_fraction:.0%} validation split; ingest more images"
        )

    keras.utils.set_random_seed(cfg.seed)
    if cfg.warm_start:
        trunk, parent = _parent_trunk(store, cfg, classes, prep)
    else:
        trunk, parent = build(cfg.arch, len(classes), prep, sample=x[~val][:WHITENING_SAMPLE], width=recipe.width,
                              dropout=recipe.dropout, activation=recipe.activation,
                              precision=training_precision(recipe.precision)), None
    onehot = np.eye(len(classes), dtype=np.float32)
    batches = Batches(x[~val], onehot[y[~val]], recipe.batch_size, cfg.seed, recipe.augment)
    # fine-tuning starts from trained weights: a tenth of the recipe's rate unless one was given
    rate = recipe.learning_rate / 10 if parent and cfg.learning_rate is None else recipe.learning_rate
    trunk.compile(
        optimizer=optimizer(recipe, len(batches), rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    progress = _progress_callback(recipe.epochs)
    # validation in batches of the training size: one more compiled step shape, not two
    history = trunk.fit(batches, validation_data=(x[val], onehot[y[val]]), epochs=recipe.epochs, verbose=0,
                        validation_batch_size=recipe.batch_size, callbacks=[progress, *callbacks])
    seconds = time.perf_counter() - started
    problem = cpu_fallback_warning(device_info(), count_gpus())
    if problem:
        warnings.warn(f"training {cfg.name}: {problem}", stacklevel=2)
    model = with_tta(trunk, recipe.tta)

    val_probs = model.predict(x[val], batch_size=512, verbose=0)
    temperature = fit_temperature(val_probs, y[val])
    val_stats = PartitionStats.from_predictions(val_probs, y[val])
    curves = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    card = ModelCard(
        name=None, version=None,  # the registry's to give
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        arch=cfg.arch,
        classes=classes,
        preprocessing=prep.to_dict(),
        parameters=int(trunk.count_params()),
        training={
            **asdict(cfg),
            # the values used, the recipe's where unset
            **{k: getattr(recipe, k) for k in (*TUNABLE, "activation", "tta", "ema")},
            "recipe": recipe.to_dict(),
            "warm_start_from": parent,
            "learning_rate_used": rate,
            "backend": keras.backend.backend(),
            "keras_version": keras.__version__,
            "device": device_info(),  # backend, device kind and name (NVIDIA H200, cpu), framework versions
            "seconds": round(seconds, 2),
            # per epoch, validation included; on JAX the first also compiles the training step
            "epoch_seconds": [round(t, 3) for t in progress.epoch_seconds],
            "epochs_run": len(curves["loss"]),  # fewer than asked if a callback stopped it
            "images_per_second": round(len(curves["loss"]) * int((~val).sum()) / seconds, 1),
            "train_rows": int((~val).sum()),
            "validation_rows": int(val.sum()),
            "skipped_undecodable": skipped,
        },
        data=TrainingData(cfg.dataset, manifest.fingerprint, cfg.test_dataset, test_fingerprint=None),
        metrics=Metrics(validation=_metrics(val_probs, y[val], val_stats), test=None),
        learning_curves=curves,
        fit=Fit.from_dict(fit_verdict(curves)),
        calibration=Calibration(
            temperature=temperature,
            validation_nll_before=nll(val_probs, y[val]),
            validation_nll_after=nll(scale_temperature(val_probs, temperature), y[val]),
            # bias-corrected temperature scaling, for the cells MLLS/EM and COT read (stats.BiasCorrection)
            bcts=fit_bcts(val_probs, y[val]).to_dict(),
        ),
        # label-free monitoring: the ATC threshold and the validation output histograms
        atc=atc_reference(val_probs, y[val], temperature),
        validation_rows=encode_rows(val_probs, y[val]),  # BBSE's bootstrap intervals resample them
        reference=_reference("validation", cfg.dataset, val_stats),  # the test split's replaces it if tested
    )
    return model, card


def _reference(split: str, dataset: str, stats: PartitionStats) -> Reference:
    """The class mix and accuracy monitoring compares nights with."""
    return Reference(split, dataset, stats.rows, stats.predicted_counts.tolist(), stats.correct / stats.labelled)


def _parent_trunk(store: Store, cfg: TrainConfig, classes: list[str], prep: Preprocessing):
    """The registered model to fine-tune, as a trainable net (without its test-time wrapper)."""
    mv = ModelVersion.parse(cfg.warm_start)
    card = read_card(store, mv)
    if card.classes != classes or Preprocessing.from_dict(card.preprocessing) != prep:
        raise BatchmlError(
            f"--warm-start {mv} predicts {card.classes} from {card.preprocessing}, but {cfg.dataset!r} "
            f"labels {classes}: fine-tune on data with the parent's classes, or train from scratch"
        )
    model = load_model(store, mv)
    inner = [layer for layer in model.layers if hasattr(layer, "layers") and layer.name == card.arch]
    return (inner[0] if inner else model), str(mv)


def _evaluate_test(store: Store, cfg: TrainConfig, classes: list[str], model) -> tuple[Evaluation, PartitionStats, str]:
    """The test set's metrics, its summed statistics and its fingerprint."""
    manifest = datasets.read_manifest(store, cfg.test_dataset)
    if manifest.classes != classes:
        raise BatchmlError(
            f"test dataset {cfg.test_dataset!r} has classes {manifest.classes}, "
            f"but {cfg.dataset!r} has {classes}: ingest both with the same --classes"
        )
    x, y, _, _ = datasets.load_labelled(store, cfg.test_dataset, Preprocessing())
    probs = model.predict(x, batch_size=512, verbose=0)
    stats = PartitionStats.from_predictions(probs, y)
    return _metrics(probs, y, stats), stats, manifest.fingerprint


def _metrics(probs: np.ndarray, labels: np.ndarray, stats: PartitionStats) -> Evaluation:
    prob_confusion = np.zeros((probs.shape[1],) * 2)
    np.add.at(prob_confusion, labels, probs)  # true class x summed predicted probabilities
    return Evaluation(
        rows=len(labels),
        accuracy=stats.correct / stats.labelled,
        loss=nll(probs, labels),
        confusion=stats.confusion.tolist(),
        prob_confusion=prob_confusion.tolist(),
    )


# -- progress ------------------------------------------------------------------------------


def _emit(msg: dict) -> None:
    """Send a progress event to the client through the scheduler; print if not on a worker
    (or where Dask is not installed: ``fit`` alone runs on a bare Keras machine)."""
    try:
        from distributed import get_worker

        get_worker().log_event(TRAIN_TOPIC, msg)
    except (ValueError, ImportError):
        _print_event(msg)


def _show_event(event, progress: Progress) -> None:
    """Epochs advance the client's progress bar (or line); other events are printed."""
    msg = event[1] if isinstance(event, tuple) else event
    if msg.get("stage") == "epoch":
        progress.update(1, "  ".join(f"{k} {v:.4f}" for k, v in msg["logs"].items()))
    elif msg.get("stage") == "batch":
        progress.say(f"epoch {msg['epoch']} batch {msg['batch']}")
    else:
        _print_event(msg)


def _print_event(event) -> None:
    msg = event[1] if isinstance(event, tuple) else event
    if msg.get("stage") == "epoch":
        curves = "  ".join(f"{k} {v:.4f}" for k, v in msg["logs"].items())
        print(f"train: epoch {msg['epoch']}/{msg['epochs']} ({msg['seconds']:.0f}s)  {curves}", flush=True)
    elif msg.get("stage") == "batch":
        print(f"train: epoch {msg['epoch']}/{msg['epochs']} batch {msg['batch']}", flush=True)
    else:
        print("train: " + ", ".join(f"{k} {v}" for k, v in msg.items() if k != "worker"), flush=True)


def _progress_callback(epochs: int):
    """A Keras callback sending events; built here so that importing this module skips Keras."""
    import keras

    class ProgressEvents(keras.callbacks.Callback):
        """Epoch summaries, and a heartbeat every 15 s within long epochs."""

        def __init__(self, epochs: int) -> None:
            super().__init__()
            self.epochs = epochs
            self.epoch_seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.start = epoch + 1, time.perf_counter()
            self.last = self.start

        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() - self.last > 15:
                self.last = time.perf_counter()
                _emit({"stage": "batch", "epoch": self.epoch, "epochs": self.epochs, "batch": batch + 1})

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self.start)
            _emit({
                "stage": "epoch", "epoch": epoch + 1, "epochs": self.epochs,
                "seconds": self.epoch_seconds[-1],
                "logs": {k: float(v) for k, v in (logs or {}).items()},
            })

    return ProgressEvents(epochs)
