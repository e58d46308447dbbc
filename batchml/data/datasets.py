"""Input datasets in the store: ``images/<dataset>/part-NNNNN.parquet`` plus ``dataset.json``.

A partition holds ``image_id`` (string, unique in the dataset), ``image`` (the encoded
bytes as received), ``label`` (int16, null where unknown) and any extra columns, which
scoring carries through to the predictions. ``dataset.json`` is written last by ingest:
it lists the partitions with their content hashes and the class names.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from batchml import layout
from batchml.data.images import Preprocessing, decode_images
from batchml.errors import BatchmlError
from batchml.records import DatasetManifest
from batchml.store import Store

DEFAULT_PARTITION_SIZE = 2000  # images per partition: ingest's cut, and a prefix's when scoring raw files
# the columns every partition has, whether ingested or read from a prefix of files
PARTITION_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("image", pa.binary()), ("label", pa.int16())]
)


def partition_table(image_ids: list[str], images: list[bytes], labels: list[int | None]) -> pa.Table:
    """A partition's required columns, typed by ``PARTITION_SCHEMA``."""
    return pa.table([image_ids, images, labels], schema=PARTITION_SCHEMA)


def list_datasets(store: Store) -> list[str]:
    return [d for d in store.list(layout.DATASETS) if store.exists(layout.dataset_path(d, layout.DATASET_MANIFEST))]


def read_manifest(store: Store, dataset: str) -> DatasetManifest:
    """The committed manifest of a dataset; a clear error if there is none."""
    rel = layout.dataset_path(dataset, layout.DATASET_MANIFEST)
    if not store.exists(rel):
        known = ", ".join(list_datasets(store)) or "none yet"
        raise BatchmlError(
            f"unknown dataset {dataset!r} in {store.url()} (known: {known}). "
            f"Create it with: batchml ingest SOURCE --dataset {dataset}"
        )
    return DatasetManifest.from_dict(store.read_json(rel))


def read_partition(store: Store, dataset: str, partition: str) -> pa.Table:
    return store.read_parquet(layout.dataset_path(dataset, partition))


def content_hash(table: pa.Table) -> str:
    """sha256 over ids, image bytes and labels: independent of the Parquet writer."""
    h = hashlib.sha256()
    for image_id, image, label in zip(
        table["image_id"].to_pylist(), table["image"].to_pylist(), table["label"].to_pylist(),
        strict=True,
    ):
        h.update(image_id.encode() + b"\0" + image + b"\0" + str(label).encode() + b"\n")
    return h.hexdigest()


def in_validation(image_ids: list[str], fraction: float) -> np.ndarray:
    """A fixed hold-out by hashed id: stable across reruns, partitionings and machines."""
    cut = int(fraction * 2**32)
    return np.array(
        [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4).digest(), "big") < cut
         for i in image_ids],
        dtype=bool,
    )


def load_labelled(store: Store, dataset: str, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """All labelled, decodable images of a dataset: (pixels uint8 NHWC, labels, ids, skipped)."""
    manifest = read_manifest(store, dataset)
    xs, ys, ids, skipped = [], [], [], 0
    for part in manifest.partitions:
        table = read_partition(store, dataset, part["name"])
        labels = table["label"].to_numpy(zero_copy_only=False)
        keep = ~np.isnan(labels.astype(float))
        images = [b for b, k in zip(table["image"].to_pylist(), keep, strict=True) if k]
        pixels, good, bad = decode_images(images, prep)
        skipped += len(bad)
        part_ids = [i for i, k in zip(table["image_id"].to_pylist(), keep, strict=True) if k]
        xs.append(pixels)
        ys.append(labels[keep][good].astype(np.int64))
        ids.extend(part_ids[g] for g in good)
    if not ids:
        raise BatchmlError(f"dataset {dataset!r} has no labelled, decodable images to train on")
    return np.concatenate(xs), np.concatenate(ys), ids, skipped
