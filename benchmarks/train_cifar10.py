"""CIFAR-10 training: the tutorial CNN's time to 75% test accuracy against the fast net.

    python benchmarks/train_cifar10.py [--root benchmarks/out/train-store] [--only tutorial|fast]
        [--fast-epochs N] [--width W] [--batch-size B] [--learning-rate LR] [--momentum M]
        [--weight-decay WD] [--activation relu|gelu] [--[no-]ema] [--tutorial-limit 1800] [--source PATH]

Ingests ``../shared/data/cifar10-jpeg.tar.gz`` (50,000 training and 10,000 test images)
and trains through batchml's own training path (``batchml.train.training.fit``: the recipe,
augmentation, schedule and validation split of ``batchml train``), in this process, on
49,000 training images (1,000 held out for validation and calibration):

- ``tutorial``: epochs until its test accuracy reaches 75%, or ``--tutorial-limit`` seconds
  of training. The test set is scored after every epoch for this measurement only; that
  time is not counted.
- ``fast``: its recipe (``--fast-epochs``, ``--width``), then the test set once with the
  saved model (its test-time augmentation), and for comparison with flips only and none.

Training seconds are the ``fit`` call's wall time (validation included; on JAX the first
epoch also compiles the step: ``fast_compile_seconds`` estimates that share as the first
epoch's time less the median of the others). The last line
is one JSON object with ``fast_test_accuracy``, ``fast_train_seconds``,
``tutorial_seconds_to_75`` (null if not reached) and more.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from batchml.cli import cifar10_source, setting_arguments
from batchml.data import datasets
from batchml.data.images import Preprocessing
from batchml.data.ingest import ingest
from batchml.store import Store, StoreConfig
from batchml.train.architectures import with_tta
from batchml.train.recipes import SETTINGS
from batchml.train.training import TrainConfig, fit

TARGET = 0.75
VALIDATION = 0.02  # 1,000 of the 50,000: for early diagnostics and the calibration temperature
# the fast net's flags, as argparse names them: every recipe setting, fast_epochs its epochs
FAST_FLAGS = ("fast_epochs", *(s.name for s in SETTINGS if s.name != "epochs"))


class TestAccuracy(keras.callbacks.Callback):
    """Test accuracy after each epoch; stops at ``target`` or after ``limit`` s of training
    (the time spent here is measured and left out of the training time)."""

    def __init__(self, x, y, target: float | None, limit: float) -> None:
        super().__init__()
        self.x, self.y, self.target, self.limit = x, y, target, limit
        self.accuracy, self.trained_seconds, self.reached = [], [], None

    def on_train_begin(self, logs=None):
        self.started, self.excluded = time.perf_counter(), 0.0

    def on_epoch_end(self, epoch, logs=None):
        t = time.perf_counter()
        acc = float((self.model.predict(self.x, batch_size=512, verbose=0).argmax(1) == self.y).mean())
        trained = t - self.started - self.excluded
        self.excluded += time.perf_counter() - t
        self.accuracy.append(round(acc, 4))
        self.trained_seconds.append(round(trained, 1))
        print(f"  epoch {epoch + 1}: test accuracy {acc:.4f} after {trained:.0f}s of training", flush=True)
        if self.target and acc >= self.target and self.reached is None:
            self.reached = (epoch + 1, trained)
            self.model.stop_training = True
        if trained >= self.limit:
            self.model.stop_training = True


class EpochTimes(keras.callbacks.Callback):
    """Wall seconds of each epoch."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self.started, 2))


def prepare(root: str, source: str | None = None) -> tuple[Store, np.ndarray, np.ndarray]:
    store = Store(StoreConfig(root))
    source = source or cifar10_source()
    for split in ("train", "test"):
        ingest(store, source, f"cifar10-{split}", split, verbose=False)
    x, y, _, _ = datasets.load_labelled(store, "cifar10-test", Preprocessing())
    return store, x, y


def run_tutorial(root: str, limit: float, source: str | None) -> dict:
    store, x_test, y_test = prepare(root, source)
    probe = TestAccuracy(x_test, y_test, TARGET, limit)
    cfg = TrainConfig("cifar10-train", arch="tutorial", epochs=1000, validation_fraction=VALIDATION)
    print(f"tutorial CNN: until {TARGET:.0%} test accuracy or {limit:.0f}s", flush=True)
    fit(store, cfg, callbacks=(probe,))
    return {"tutorial_seconds_to_75": round(probe.reached[1], 1) if probe.reached else None,
            "tutorial_epochs_to_75": probe.reached[0] if probe.reached else None,
            "tutorial_test_accuracy_by_epoch": probe.accuracy,
            "tutorial_seconds_by_epoch": probe.trained_seconds}


def run_fast(root: str, source: str | None, **hyper) -> dict:
    return train_fast(*prepare(root, source), **hyper)


def train_fast(store: Store, x_test: np.ndarray, y_test: np.ndarray, **hyper) -> dict:
    """The fast net's figures, trained with ``hyper`` (``TrainConfig`` fields) on the ingested store."""
    cfg = TrainConfig("cifar10-train", arch="fast", validation_fraction=VALIDATION, **hyper)
    recipe = cfg.recipe()
    print(f"fast net: {recipe.epochs} epochs, width {recipe.width}, batch {recipe.batch_size}, "
          f"peak learning rate {recipe.learning_rate}, on {keras.backend.backend()}", flush=True)
    times = EpochTimes()
    model, card = fit(store, cfg, callbacks=(times,))
    later = times.seconds[1:] or times.seconds
    trunk = model.get_layer("fast")

    def accuracy(m) -> float:
        return round(float((m.predict(x_test, batch_size=512, verbose=0).argmax(1) == y_test).mean()), 4)

    return {"fast_test_accuracy": accuracy(model), "fast_tta": recipe.tta,
            "fast_test_accuracy_flip_tta": accuracy(with_tta(trunk, "flip")),
            "fast_test_accuracy_without_tta": accuracy(trunk),
            "fast_train_seconds": card.training_seconds, "fast_epochs": recipe.epochs,
            "fast_compile_seconds": round(max(0.0, times.seconds[0] - float(np.median(later))), 1),
            "fast_epoch_seconds": times.seconds, "fast_batch_size": recipe.batch_size,
            "fast_learning_rate": recipe.learning_rate, "fast_momentum": recipe.momentum,
            "fast_weight_decay": recipe.weight_decay, "fast_activation": recipe.activation,
            "fast_ema": recipe.ema,
            "fast_width": recipe.width, "fast_parameters": card.parameters,
            "fast_validation_accuracy_by_epoch": [round(a, 4) for a in card.learning_curves["val_accuracy"]],
            "fast_fit": card.fit.verdict, "backend": card.training["backend"]}


def apart(args: argparse.Namespace, which: str) -> dict:
    """Each net in its own process: TensorFlow's thread pools of one do not slow the other."""
    command = [sys.executable, __file__, "--root", args.root, "--only", which, "--json-only",
               "--tutorial-limit", str(args.tutorial_limit)]
    for flag in ("source", *FAST_FLAGS):
        value = getattr(args, flag)
        if isinstance(value, bool):  # --ema / --no-ema
            command.append(f"--{'' if value else 'no-'}{flag}")
        elif value:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    *said, result = out.stdout.strip().splitlines()
    print("\n".join(said), flush=True)
    return json.loads(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).parent / "out" / "train-store"))
    parser.add_argument("--only", choices=("tutorial", "fast"))
    parser.add_argument("--fast-epochs", type=int)
    setting_arguments(parser, skip=("epochs",))  # the fast net's
    parser.add_argument("--source", help="CIFAR-10 archive (default: ../shared/data/cifar10-jpeg.tar.gz)")
    parser.add_argument("--tutorial-limit", type=float, default=1800.0)
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json_only:
        result = (run_tutorial(args.root, args.tutorial_limit, args.source) if args.only == "tutorial"
                  else run_fast(args.root, args.source, **{
                      "epochs" if flag == "fast_epochs" else flag: getattr(args, flag) for flag in FAST_FLAGS}))
        print(json.dumps(result))
        return 0
    figures = {}
    for which in ([args.only] if args.only else ["fast", "tutorial"]):
        figures.update(apart(args, which))
    figures.setdefault("tutorial_seconds_to_75", None)
    if "fast_test_accuracy" in figures:
        print(f"fast net: test accuracy {figures['fast_test_accuracy']:.4f} with {figures['fast_tta']} test-time "
              f"augmentation (flip only {figures['fast_test_accuracy_flip_tta']:.4f}, none "
              f"{figures['fast_test_accuracy_without_tta']:.4f}) after {figures['fast_train_seconds']:.1f}s "
              f"of training ({figures['fast_compile_seconds']:.1f}s of it compiling, estimated), "
              f"{figures['fast_epochs']} epochs, width {figures['fast_width']}, batch {figures['fast_batch_size']}, "
              f"on {figures['backend']} (targets: 2-core CPU >= 0.88 within 1200s; one H100 >= 0.94 within 30s)")
    if figures.get("tutorial_test_accuracy_by_epoch"):
        reached = (f"reached 75% after {figures['tutorial_seconds_to_75']:.0f}s, "
                   f"epoch {figures['tutorial_epochs_to_75']}" if figures["tutorial_seconds_to_75"]
                   else f"did not reach 75% within {args.tutorial_limit:.0f}s")
        print(f"tutorial CNN: {reached} (test accuracy by epoch {figures['tutorial_test_accuracy_by_epoch']})")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
