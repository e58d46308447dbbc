"""A store with a committed run written by hand (no Dask, no Keras): the fast lane's stand-in
for a scored night, for the tests of readers, ``doctor``, notifications and reports."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from batchml import layout
from batchml.data.images import Preprocessing
from batchml.records import RunManifest
from batchml.registry import ModelVersion, promote
from batchml.stats import PartitionStats
from batchml.store import Store
from tests.conftest import CLASSES

MODEL = ModelVersion("tiny", "v1")


def tiny_card() -> dict:
    k = len(CLASSES)
    confusion = (np.eye(k, dtype=int) * 8 + 1).tolist()
    return {"arch": "tiny", "name": "tiny", "version": "v1", "classes": CLASSES,
            "preprocessing": Preprocessing().to_dict(), "calibration": {"temperature": 1.0},
            "created_at": "2026-11-01T00:00:00+00:00",
            "metrics": {"validation": {"rows": 30, "accuracy": 0.8, "loss": 0.5, "confusion": confusion}},
            "reference": {"accuracy": 0.8, "predicted_counts": [10] * k}}


def register_tiny(store: Store) -> None:
    store.write_bytes(MODEL.model_path, b"not a real model: the fast lane never loads it")
    store.write_json(MODEL.card_path, tiny_card())
    promote(store, MODEL, "production")


def fake_run(store: Store, run_id: str = "night-1", partitions: int = 2, rows: int = 40, seed: int = 0) -> None:
    """A committed run of ``partitions`` partitions of ``rows`` rows each, as scoring writes it."""
    if not store.exists(MODEL.card_path):
        register_tiny(store)
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    run = {"run_id": run_id, "dataset": "shapes", "input": "dataset", "dataset_fingerprint": "f" * 64,
           "partition_size": None, "model_version": str(MODEL), "model_ref": "tiny/production",
           "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    store.write_json(layout.run_path(run_id, layout.RUN_SPEC), run)
    parts = []
    for i in range(partitions):
        name = layout.partition_name(i)
        probs = rng.dirichlet(np.ones(k), rows).astype(np.float32)
        labels = rng.integers(0, k, rows)
        stats = PartitionStats.from_predictions(probs, labels)
        ids = [f"{run_id}/{name}/{j}" for j in range(rows)]
        store.write_parquet(layout.run_output(run_id, "predictions", name),
                            pa.table({"image_id": ids, "predicted": probs.argmax(axis=1).astype(np.int16)}))
        record = {"partition": name, "rows": rows, "errors": 0, "batch_size": 512, "stats": stats.to_dict(),
                  "seconds": {}, "worker": "test", "device": {}}
        store.write_json(layout.run_stats(run_id, name), record)
        parts.append(record)
    manifest = RunManifest.written({
        **run, "classes": CLASSES, "batch_size": "auto", "max_error_ratio": 0.01, "rows": rows * partitions,
        "errors": 0, "labelled": rows * partitions, "batch_sizes_used": [512], "devices": [],
        "partitions": [{k: p[k] for k in ("partition", "rows", "errors", "batch_size", "seconds", "worker")}
                       for p in parts],
        "wall_seconds": 1.0, "images_per_second": None,
        "committed_at": datetime.now(UTC).isoformat(timespec="milliseconds")})
    store.write_json(layout.run_path(run_id, layout.RUN_MANIFEST), manifest.to_dict())
