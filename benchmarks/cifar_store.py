"""The store most benchmarks start from: CIFAR-10 ingested from ``../shared/data`` and a production
model (the store's own, else the tutorial CNN trained for one epoch: these benchmarks time the
system, not the model)."""

from __future__ import annotations

from batchml.cli import cifar10_source
from batchml.cluster import ClusterConfig, connect
from batchml.data import datasets
from batchml.data.ingest import ingest
from batchml.errors import BatchmlError
from batchml.layout import ModelVersion
from batchml.registry import DEFAULT_ALIAS, promote, resolve
from batchml.store import Store
from batchml.train.training import TrainConfig, train


def cifar10_store(store: Store) -> tuple[ModelVersion, list[dict], list[str]]:
    """Ingest both splits (a no-op once done), make sure a production model exists, and return it
    with the test images' rows (image_id, image, label) and the classes."""
    source = cifar10_source()
    for split in ("train", "test"):
        ingest(store, source, f"cifar10-{split}", split, verbose=False)
    try:
        mv = resolve(store, DEFAULT_ALIAS)
    except BatchmlError:
        with connect(ClusterConfig()) as client:
            mv, _ = train(client, store, TrainConfig("cifar10-train", epochs=1), verbose=False)
        promote(store, mv)
    manifest = datasets.read_manifest(store, "cifar10-test")
    test = [row for p in manifest.partitions
            for row in datasets.read_partition(store, "cifar10-test", p["name"]).to_pylist()]
    return mv, test, manifest.classes
