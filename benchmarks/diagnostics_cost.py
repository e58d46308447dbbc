"""What each stage of scoring one partition costs in one process, with and without the diagnostics.

    python benchmarks/diagnostics_cost.py [--root benchmarks/out/throughput-store] [--repeats 5]

On these 2-core machines the diagnostics (input health, hashes, novelty) decide how far
``batchml score`` stays from the bare model and the plain loop (``score_throughput.py``,
``object_storage.py``): every millisecond they take is a millisecond the model waits. This
times, on one partition of the store's ``cifar10-test`` (2,000 images) and the production model,
each stage ``score_partition`` runs, alone and in this process (no cluster, no second thread):
read, decode, predict (the model alone, and the model with its novelty output), input health
(pixel properties and dHash; content hashes), statistics, failure cases; and, for the novelty,
its similarity product and its top-k apart, at the scoring batch size. The medians of ``--repeats``.
The last line is one JSON object of milliseconds per partition, with ``images`` and
``diagnostics_share`` (what the diagnostics add, over the stages without them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from cifar_store import cifar10_store

from batchml.backend import configure_backend
from batchml.data import datasets
from batchml.data.health import _pixels_measured, content_hashes, measure
from batchml.data.images import Preprocessing, decode_batch
from batchml.device import CPU_BATCH
from batchml.registry import load_model, read_card
from batchml.score import failures
from batchml.stats import PartitionStats
from batchml.store import Store, StoreConfig
from batchml.train.novelty import feature_model, novelty_model, predict_features, read_novelty


def timed(repeats: int, run) -> float:
    """Median milliseconds of ``run()`` over ``repeats`` calls, after one untimed call."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 1)


def in_batches(predict, pixels: np.ndarray, batch: int) -> list:
    return [predict(pixels[i: i + batch]) for i in range(0, len(pixels), batch)]


def similarity_split(reference, features: np.ndarray, batch: int, repeats: int) -> dict:
    """The novelty layer's two heavy operations apart: features x bank (on its axes, for a
    projected bank), then its top-k."""
    import tensorflow as tf

    bank_t = tf.constant(reference.bank.astype(np.float32).T)
    axes = tf.constant(reference.axes if reference.axes is not None else np.eye(features.shape[1], dtype=np.float32))
    one_batch = tf.constant(features[:batch])
    product = tf.function(lambda f: tf.matmul(tf.matmul(f, axes), bank_t))
    top_k = tf.function(lambda s: tf.math.top_k(s, reference.k)[0])
    similarities = product(one_batch)
    scale = len(features) / batch
    return {"novelty_product_ms": round(timed(repeats, lambda: product(one_batch).numpy()) * scale, 1),
            "novelty_top_k_ms": round(timed(repeats, lambda: top_k(similarities).numpy()) * scale, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).parent / "out" / "throughput-store"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    store = Store(StoreConfig(args.root))
    mv, _, _ = cifar10_store(store)
    configure_backend()
    card = read_card(store, mv)
    model = load_model(store, mv)
    reference = read_novelty(store, mv, card.novelty)
    scorer = novelty_model(model, reference) if reference is not None else None
    name = datasets.read_manifest(store, "cifar10-test").partitions[0]["name"]
    r = args.repeats

    ms = {"read_ms": timed(r, lambda: datasets.read_partition(store, "cifar10-test", name))}
    table = datasets.read_partition(store, "cifar10-test", name)
    blobs = table["image"].to_pylist()
    ms["decode_ms"] = timed(r, lambda: decode_batch(blobs, Preprocessing()))
    decoded = decode_batch(blobs, Preprocessing(), measure=True)
    pixels, n = decoded.pixels, len(decoded.pixels)
    ms["predict_ms"] = timed(r, lambda: in_batches(model.predict_on_batch, pixels, CPU_BATCH))
    probs = np.concatenate([np.asarray(p) for p in in_batches(model.predict_on_batch, pixels, CPU_BATCH)])
    labels = table["label"].fill_null(-1).to_numpy().astype(np.int64)[decoded.good]
    novelty = None
    if scorer is not None:
        ms["predict_with_novelty_ms"] = timed(r, lambda: in_batches(scorer.predict_on_batch, pixels, CPU_BATCH))
        novelty = np.concatenate([np.asarray(v).ravel() for _, v in in_batches(scorer.predict_on_batch, pixels,
                                                                                CPU_BATCH)]).astype(np.float64)
        _, features = predict_features(feature_model(model), pixels)
        ms |= similarity_split(reference, features, CPU_BATCH, r)
    ms["health_ms"] = timed(r, lambda: measure([blobs[i] for i in decoded.good], pixels, decoded.received))
    ms["health_pixels_ms"] = timed(r, lambda: _pixels_measured(pixels))
    ms["health_content_hashes_ms"] = timed(r, lambda: content_hashes(blobs))
    health = measure([blobs[i] for i in decoded.good], pixels, decoded.received)
    ms["stats_ms"] = timed(r, lambda: PartitionStats.from_predictions(probs, labels, health=health, novelty=novelty))
    ms["stats_without_diagnostics_ms"] = timed(r, lambda: PartitionStats.from_predictions(probs, labels))
    ids = table["image_id"].to_pylist()
    ms["failures_ms"] = timed(r, lambda: failures.select(ids, name, pixels, probs, labels, novelty))

    plain = ms["read_ms"] + ms["decode_ms"] + ms["predict_ms"] + ms["stats_without_diagnostics_ms"]
    added = (ms.get("predict_with_novelty_ms", ms["predict_ms"]) - ms["predict_ms"] + ms["health_ms"]
             + ms["stats_ms"] - ms["stats_without_diagnostics_ms"])
    for key, value in ms.items():
        print(f"{key.removesuffix('_ms').replace('_', ' ')}: {value:,.1f} ms for {n:,} images")
    print(f"the diagnostics add {added:,.1f} ms to {plain:,.1f} ms ({added / plain:.0%}) of one process's work")
    print(json.dumps({**ms, "images": n, "diagnostics_share": round(added / plain, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
