"""Shift detection on simulated nights of real CIFAR-10 test images scored by a trained model.

    python benchmarks/shift_detection.py [--root benchmarks/out/shift-store] [--epochs 10]

Trains the tutorial CNN on the 50,000 training images (or reuses the store's production
model), scores the 10,000 test images through `batchml score`, then simulates nights by
drawing test images and folding their predictions with the same `PartitionStats` and
`build_row`/`alerts` code that `batchml monitor` runs. Prints:
- the false alarm rate (any alert) over unshifted nights of 2,000 images (target <= 1%);
- the detection rate when one class's share doubles to 20%, nights of 2,000 (target >= 95%);
- the mean L1 error of the BBSE estimate of the class priors, nights of 5,000 images with
  priors drawn from Dirichlet(1, ..., 1) (target <= 0.05);
- the mean gap between label-free estimated and measured accuracy on unshifted nights
  (target <= 2 points), and the divergence-alert rate on nights of corrupted images
  (Gaussian blur, Gaussian noise, low contrast).
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from batchml import layout
from batchml.backend import configure_backend
from batchml.cli import cifar10_source
from batchml.cluster import ClusterConfig, connect
from batchml.data import datasets
from batchml.data.images import Preprocessing
from batchml.data.ingest import ingest
from batchml.errors import BatchmlError
from batchml.monitoring.run_monitor import MonitorConfig, alerts, build_row
from batchml.registry import load_model, promote, read_card, resolve
from batchml.score.scoring import ScoreConfig, score
from batchml.stats import PartitionStats
from batchml.store import Store, StoreConfig
from batchml.train.training import TrainConfig, train

NULL_NIGHTS, SHIFT_NIGHTS, BBSE_NIGHTS, CORRUPT_NIGHTS = 300, 200, 100, 50
NIGHT, BBSE_NIGHT = 2000, 5000
CFG = MonitorConfig()


def prepare(store: Store, epochs: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """The model's card and its test-set probabilities (N, K) and labels (N,), via batchml score."""
    source = cifar10_source()
    for split in ("train", "test"):
        ingest(store, source, f"cifar10-{split}", split)
    with connect(ClusterConfig()) as client:
        try:
            mv = resolve(store, "production")
            print(f"reusing {mv} from {store.url()}")
        except BatchmlError:
            mv, _ = train(client, store, TrainConfig("cifar10-train", "cifar10-test", epochs=epochs))
            promote(store, mv)
        score(client, store, ScoreConfig("cifar10-test", str(mv), run_id=f"shift-bench-{mv.version}"))
    preds = pd.read_parquet(store.path(layout.run_folder(f"shift-bench-{mv.version}", "predictions")))
    return read_card(store, mv), np.stack(preds.probabilities.to_numpy()), preds.label.to_numpy().astype(int)


def corrupted_probs(store: Store, card: dict) -> dict[str, np.ndarray]:
    configure_backend()
    model = load_model(store, resolve(store, "production"))
    x, _, _, _ = datasets.load_labelled(store, "cifar10-test", Preprocessing())
    xf = x.astype(np.float32)
    variants = {
        "blur": gaussian_filter(xf, sigma=(0, 1.2, 1.2, 0)),
        "noise": xf + np.random.default_rng(1).normal(0, 30, xf.shape),
        "low_contrast": (xf - xf.mean(axis=(1, 2, 3), keepdims=True)) * 0.3 + xf.mean(axis=(1, 2, 3), keepdims=True),
    }
    return {k: model.predict(np.clip(v, 0, 255).astype(np.uint8), batch_size=512, verbose=0)
            for k, v in variants.items()}


def night_row(card: dict, probs: np.ndarray, labels: np.ndarray, idx: np.ndarray, history: list) -> dict:
    stats = PartitionStats.from_predictions(probs[idx], labels[idx], card["calibration"]["temperature"])
    run = {"run_id": "night", "dataset": "sim", "model_version": "m", "committed_at": "", "classes": card["classes"]}
    return build_row(run, stats, card, history, CFG)


def draw_by_class(rng, labels: np.ndarray, counts: np.ndarray, replace: bool) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=replace)
                           for c, n in enumerate(counts) if n])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).parent / "out" / "shift-store"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    store = Store(StoreConfig(args.root))
    card, probs, labels = prepare(store, args.epochs)
    rng = np.random.default_rng(args.seed)
    k = probs.shape[1]
    print(f"model {card['name']}/{card['version']}: test accuracy {card['metrics']['test']['accuracy']:.4f}, "
          f"temperature {card['calibration']['temperature']:.3f}")

    # unshifted nights, each against the reference and the nights before it
    history, false_alarms, gaps, kinds = [], 0, [], {}
    for _ in range(NULL_NIGHTS):
        idx = rng.choice(len(labels), NIGHT, replace=False)
        row = night_row(card, probs, labels, idx, history[-CFG.history_nights:])
        fired = alerts(row, 0.01, CFG)
        false_alarms += bool(fired)
        for a in fired:
            kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
        gaps.append(abs(row["expected_accuracy"] - row["accuracy"]) * 100)
        history.append(np.asarray(row["predicted_counts"]))
    baseline = history[-CFG.history_nights:]

    # one class's share doubled (10% -> 20%)
    detected = 0
    for night in range(SHIFT_NIGHTS):
        prior = np.full(k, 0.8 / (k - 1))
        prior[night % k] = 0.2
        idx = draw_by_class(rng, labels, rng.multinomial(NIGHT, prior), replace=False)
        fired = alerts(night_row(card, probs, labels, idx, baseline), 0.01, CFG)
        detected += any(a["kind"] == "class_shift" for a in fired)

    # label shift estimates against the night's true class mix
    l1 = []
    for _ in range(BBSE_NIGHTS):
        counts = rng.multinomial(BBSE_NIGHT, rng.dirichlet(np.ones(k)))
        row = night_row(card, probs, labels, draw_by_class(rng, labels, counts, replace=True), baseline)
        l1.append(np.abs(np.asarray(row["estimated_priors"]) - counts / BBSE_NIGHT).sum())

    # corrupted images: does the label-free estimate diverge from the measured accuracy?
    corrupt = {}
    for name, p in corrupted_probs(store, card).items():
        rows = [night_row(card, p, labels, rng.choice(len(labels), NIGHT, replace=False), baseline)
                for _ in range(CORRUPT_NIGHTS)]
        fired = [any(a["kind"] == "accuracy_divergence" for a in alerts(r, 0.01, CFG)) for r in rows]
        corrupt[name] = {"accuracy": float(np.mean([r["accuracy"] for r in rows])),
                         "expected_accuracy": float(np.mean([r["expected_accuracy"] for r in rows])),
                         "alert_rate": float(np.mean(fired))}

    figures = {
        "false_alarm_rate": false_alarms / NULL_NIGHTS,
        "detection_rate": detected / SHIFT_NIGHTS,
        "bbse_l1": float(np.mean(l1)),
        "label_free_gap_points": float(np.mean(gaps)),
        "corruption_alert_rate": float(np.mean([c["alert_rate"] for c in corrupt.values()])),
        "false_alarms_by_kind": kinds,
        "corruptions": corrupt,
        "test_accuracy": card["metrics"]["test"]["accuracy"],
        "nights": {"unshifted": NULL_NIGHTS, "shifted": SHIFT_NIGHTS, "bbse": BBSE_NIGHTS,
                   "corrupted_each": CORRUPT_NIGHTS},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"false alarm rate over {NULL_NIGHTS} unshifted nights of {NIGHT}: {figures['false_alarm_rate']:.2%} "
          f"(target <= 1%; by kind {kinds})")
    print(f"detection rate, one class doubled to 20%, {SHIFT_NIGHTS} nights of {NIGHT}: "
          f"{figures['detection_rate']:.1%} (target >= 95%)")
    print(f"BBSE mean L1 error of class priors, {BBSE_NIGHTS} Dirichlet(1) nights of {BBSE_NIGHT}: "
          f"{figures['bbse_l1']:.4f} (target <= 0.05)")
    print(f"label-free vs measured accuracy on unshifted nights: mean gap {figures['label_free_gap_points']:.2f} "
          "points (target <= 2)")
    for name, c in corrupt.items():
        print(f"corrupted ({name}): accuracy {c['accuracy']:.3f}, label-free estimate {c['expected_accuracy']:.3f}, "
              f"divergence alert on {c['alert_rate']:.0%} of {CORRUPT_NIGHTS} nights")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
