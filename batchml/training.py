"""Training as a Dask task: one worker reads the dataset from the store, trains, evaluates,
calibrates and registers a model version with its card.

The task sends progress events (topic ``batchml-train``) that the client prints.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np

from batchml import datasets
from batchml.calibration import fit_temperature, nll
from batchml.errors import BatchmlError
from batchml.images import Preprocessing
from batchml.registry import DEFAULT_MODEL_NAME, ModelVersion, register
from batchml.stats import PartitionStats, scale_temperature
from batchml.store import Store, StoreConfig

TRAIN_TOPIC = "batchml-train"


@dataclass(frozen=True)
class TrainConfig:
    dataset: str  # labelled training partitions; a validation split is held out of them
    test_dataset: str | None = None  # touched once, after training, for the card's metrics
    name: str = DEFAULT_MODEL_NAME  # registered model name
    arch: str = "tutorial"
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam
    validation_fraction: float = 0.1  # share of training ids held out, by hash of image_id
    seed: int = 0


def train(client, store: Store, cfg: TrainConfig, verbose: bool = True) -> tuple[ModelVersion, dict]:
    """Run ``train_task`` on one worker of ``client``, printing its progress events."""
    datasets.read_manifest(store, cfg.dataset)  # fail here, not on a worker, if it is unknown
    if cfg.test_dataset:
        datasets.read_manifest(store, cfg.test_dataset)
    if verbose:
        client.subscribe_topic(TRAIN_TOPIC, _print_event)
    try:
        future = client.submit(train_task, store.config, cfg, pure=False)
        card = future.result()
    finally:
        if verbose:
            client.unsubscribe_topic(TRAIN_TOPIC)
    return ModelVersion(card["name"], card["version"]), card


def train_task(store_cfg: StoreConfig, cfg: TrainConfig) -> dict:
    """Train, evaluate, calibrate and register; returns the model card (runs on a worker)."""
    import keras

    from batchml.architectures import build

    store = Store(store_cfg)
    prep = Preprocessing()
    manifest = datasets.read_manifest(store, cfg.dataset)
    classes = manifest["classes"]
    _emit({"stage": "loading", "dataset": cfg.dataset, "rows": manifest["rows"]})
    x, y, ids, skipped = datasets.load_labelled(store, cfg.dataset, prep)
    val = datasets.in_validation(ids, cfg.validation_fraction)
    if val.all() or not val.any():
        raise BatchmlError(
            f"dataset {cfg.dataset!r} ({len(ids)} images) is too small to hold out a "
            f"{cfg.validation_fraction:.0%} validation split; ingest more images"
        )

    keras.utils.set_random_seed(cfg.seed)
    model = build(cfg.arch, len(classes), prep)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    history = model.fit(
        x[~val], y[~val], validation_data=(x[val], y[val]), epochs=cfg.epochs,
        batch_size=cfg.batch_size, verbose=0, callbacks=[_progress_callback(cfg.epochs)],
    )
    seconds = time.perf_counter() - started

    val_probs = model.predict(x[val], batch_size=256, verbose=0)
    temperature = fit_temperature(val_probs, y[val])
    val_stats = PartitionStats.from_predictions(val_probs, y[val])
    test = _evaluate_test(store, cfg, classes, prep, model) if cfg.test_dataset else None
    reference = test["stats"] if test else val_stats
    card = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "arch": cfg.arch,
        "classes": classes,
        "preprocessing": prep.to_dict(),
        "training": {
            **asdict(cfg),
            "backend": keras.backend.backend(),
            "keras_version": keras.__version__,
            "seconds": round(seconds, 2),
            "images_per_second": round(cfg.epochs * int((~val).sum()) / seconds, 1),
            "train_rows": int((~val).sum()),
            "validation_rows": int(val.sum()),
            "skipped_undecodable": skipped,
        },
        "data": {
            "dataset": cfg.dataset,
            "fingerprint": manifest["fingerprint"],
            "test_dataset": cfg.test_dataset,
            "test_fingerprint": test["fingerprint"] if test else None,
        },
        "metrics": {
            "validation": _metrics(val_probs, y[val], val_stats),
            "test": {k: v for k, v in test.items() if k not in ("stats", "fingerprint")} if test else None,
        },
        "learning_curves": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "calibration": {
            "temperature": temperature,
            "validation_nll_before": nll(val_probs, y[val]),
            "validation_nll_after": nll(scale_temperature(val_probs, temperature), y[val]),
        },
        "reference": {
            "split": "test" if test else "validation",
            "dataset": cfg.test_dataset or cfg.dataset,
            "rows": reference.rows,
            "predicted_counts": reference.predicted_counts.tolist(),
            "accuracy": reference.correct / reference.labelled,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        mv = register(store, cfg.name, path, card)
    _emit({"stage": "registered", "version": str(mv)})
    return {**card, "name": mv.name, "version": mv.version}


def _evaluate_test(store: Store, cfg: TrainConfig, classes: list[str], prep: Preprocessing, model) -> dict:
    manifest = datasets.read_manifest(store, cfg.test_dataset)
    if manifest["classes"] != classes:
        raise BatchmlError(
            f"test dataset {cfg.test_dataset!r} has classes {manifest['classes']}, "
            f"but {cfg.dataset!r} has {classes}: ingest both with the same --classes"
        )
    x, y, _, _ = datasets.load_labelled(store, cfg.test_dataset, prep)
    probs = model.predict(x, batch_size=256, verbose=0)
    stats = PartitionStats.from_predictions(probs, y)
    return {**_metrics(probs, y, stats), "stats": stats, "fingerprint": manifest["fingerprint"]}


def _metrics(probs: np.ndarray, labels: np.ndarray, stats: PartitionStats) -> dict:
    prob_confusion = np.zeros((probs.shape[1],) * 2)
    np.add.at(prob_confusion, labels, probs)  # true class x summed predicted probabilities
    return {
        "rows": len(labels),
        "accuracy": stats.correct / stats.labelled,
        "loss": nll(probs, labels),
        "confusion": stats.confusion.tolist(),
        "prob_confusion": prob_confusion.tolist(),
    }


# -- progress ------------------------------------------------------------------------------


def _emit(msg: dict) -> None:
    """Send a progress event to the client through the scheduler; print if not on a worker."""
    try:
        from distributed import get_worker

        get_worker().log_event(TRAIN_TOPIC, msg)
    except ValueError:
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

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.start = epoch + 1, time.perf_counter()
            self.last = self.start

        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() - self.last > 15:
                self.last = time.perf_counter()
                _emit({"stage": "batch", "epoch": self.epoch, "epochs": self.epochs, "batch": batch + 1})

        def on_epoch_end(self, epoch, logs=None):
            _emit({
                "stage": "epoch", "epoch": epoch + 1, "epochs": self.epochs,
                "seconds": time.perf_counter() - self.start,
                "logs": {k: float(v) for k, v in (logs or {}).items()},
            })

    return ProgressEvents(epochs)
