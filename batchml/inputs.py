"""What a run scores: an ingested dataset, or a prefix of raw JPEG/PNG files (local or
``s3://``) grouped into partitions by sorted name, without a separate ingest.

Either way a run sees named partitions and a fingerprint of its input, so resuming a run
checks that the input has not changed since it started.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from batchml import datasets
from batchml.errors import BatchmlError
from batchml.sources import IMAGE_SUFFIXES
from batchml.store import Store, StoreConfig


@dataclass(frozen=True)
class InputPlan:
    name: str  # the dataset name, or the prefix URL
    fingerprint: str
    classes: list[str] | None  # class names of the labels, where the input has labels
    partitions: dict[str, tuple[str, ...] | None]  # partition -> its files (a prefix) or None (a dataset)
    images: StoreConfig | None = None  # where a prefix's files live


def plan_dataset(store: Store, dataset: str) -> InputPlan:
    m = datasets.read_manifest(store, dataset)
    return InputPlan(dataset, m["fingerprint"], m["classes"] if m["labelled"] else None,
                     {p["name"]: None for p in m["partitions"]})


def plan_prefix(url: str, storage_options: dict, partition_size: int) -> InputPlan:
    """Every .jpg/.jpeg/.png under ``url``, sorted by path, cut into partitions."""
    images = Store(StoreConfig(url.rstrip("/"), storage_options))
    try:
        found = images.fs.find(images.path(""), detail=True)
    except FileNotFoundError:
        found = {}
    root = images.path("") + "/"
    files = sorted((p.removeprefix(root), info.get("size")) for p, info in found.items()
                   if p.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise BatchmlError(f"no .jpg/.jpeg/.png files under {url}: check the prefix (or pass --dataset)")
    fingerprint = hashlib.sha256("\n".join(f"{p} {s}" for p, s in files).encode()).hexdigest()
    names = [p for p, _ in files]
    parts = {f"part-{i // partition_size:05d}.parquet": tuple(names[i:i + partition_size])
             for i in range(0, len(names), partition_size)}
    return InputPlan(url, fingerprint, None, parts, images.config)


def read_files(images: StoreConfig, files: tuple[str, ...], classes: tuple[str, ...]) -> pa.Table:
    """A partition table from raw files; a parent folder named like a class gives the label.
    A file that cannot be read gets empty bytes, so it becomes an error row like a bad image."""
    store = Store(images)
    blobs = store.fs.cat([store.path(f) for f in files], on_error="return")
    data = [blobs.get(store.path(f)) for f in files]
    labels = [classes.index(parts[-2]) if len(parts := f.split("/")) > 1 and parts[-2] in classes else None
              for f in files]
    return pa.table({
        "image_id": pa.array(list(files), pa.string()),
        "image": pa.array([d if isinstance(d, bytes) else b"" for d in data], pa.binary()),
        "label": pa.array(labels, pa.int16()),
    })
