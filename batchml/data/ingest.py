"""Ingest: read a source and write input partitions and the dataset manifest.

Partitions are cut in the source's deterministic order, so rerunning the same ingest
produces the same partitions with the same content hashes: nothing is rewritten. A
committed dataset is never overwritten by a different source.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from batchml import layout
from batchml.data import datasets, remote
from batchml.data.datasets import DEFAULT_PARTITION_SIZE
from batchml.data.sources import Source, SourceImage, check_classes, open_source
from batchml.errors import BatchmlError
from batchml.progress import Progress
from batchml.records import DatasetManifest
from batchml.store import Store, options_for


@dataclass
class IngestResult:
    dataset: str
    rows: int
    partitions: int
    written: int  # partitions written now; 0 when the dataset was already there
    url: str


def ingest(
    store: Store,
    source: str,
    dataset: str,
    split: str = "train",
    partition_size: int = DEFAULT_PARTITION_SIZE,
    classes: list[str] | None = None,
    verbose: bool = True,
    storage_options: dict | None = None,
) -> IngestResult:
    """Write ``images/<dataset>/part-NNNNN.parquet`` from SOURCE, then ``dataset.json``.

    SOURCE may be a URL (``s3://bucket/prefix/``, any fsspec filesystem) of class folders or of
    images: read with ``storage_options``, by default the store's where it is the same kind of
    storage (``ingest_prefix``)."""
    layout.check_new_name("dataset", dataset)  # before opening (perhaps downloading) the source
    if partition_size < 1:
        raise BatchmlError(f"--partition-size must be at least 1, not {partition_size}")
    if classes is not None:
        check_classes(classes)
    if remote.is_url(source):
        options = storage_options if storage_options is not None else options_for(source, store)
        return ingest_prefix(store, remote.list_prefix(source, options, split, classes), dataset, partition_size,
                             verbose)
    return write_dataset(store, open_source(source, split, classes), dataset, split, partition_size, verbose)


def ingest_prefix(store: Store, prefix: remote.RemotePrefix, dataset: str,
                  partition_size: int = DEFAULT_PARTITION_SIZE, verbose: bool = True) -> IngestResult:
    """Write a listed prefix's images as ``dataset``, each partition as soon as its objects are read
    (the next one's read meanwhile). A partition that an ingest which stopped has written is kept,
    not read again, so rerunning it resumes; ``dataset.json`` last."""
    old = _old_manifest(store, dataset, prefix.classes)
    progress = Progress(f"ingest {dataset}", total=len(prefix.files), unit="images", enabled=verbose)
    chunks, parts, written = prefix.chunks(partition_size), [], 0
    ahead = remote.ReadAhead(prefix)
    try:
        for index, chunk in enumerate(chunks):
            rel = layout.dataset_path(dataset, layout.partition_name(index))
            table = _kept(store, rel, prefix, chunk)
            fresh = table is None
            if fresh:
                table = ahead.take(index, chunk)
            following = layout.dataset_path(dataset, layout.partition_name(index + 1))
            if index + 1 < len(chunks) and not store.exists(following):
                ahead.start(index + 1, chunks[index + 1])
            parts.append(_entry(store, dataset, index, table, old))
            if fresh:
                store.write_parquet(rel, table)
                written += 1
            progress.update(table.num_rows, f"{index + 1} partitions")
    finally:
        ahead.close()
    progress.say(f"{len(parts)} partitions, done")
    progress.close()
    return _commit(store, dataset, old, parts, written, prefix.description, prefix.split, prefix.classes,
                   partition_size)


def _kept(store: Store, rel: str, prefix: remote.RemotePrefix, chunk: list) -> pa.Table | None:
    """The partition an earlier ingest wrote at ``rel`` for exactly this chunk, else None."""
    if not store.exists(rel):
        return None
    try:
        table = store.read_parquet(rel)
    except (pa.ArrowException, OSError, BatchmlError):
        return None  # torn or damaged: read the objects again and replace it
    return table if prefix.written_already(chunk, table) else None


def write_dataset(store: Store, opened: Source, dataset: str, split: str = "train",
                  partition_size: int = DEFAULT_PARTITION_SIZE, verbose: bool = True) -> IngestResult:
    """Cut an opened source's images into partitions and commit them as ``dataset``."""
    old = _old_manifest(store, dataset, opened.classes)
    progress = Progress(f"ingest {dataset}", total=opened.total, unit="images", enabled=verbose)
    parts, written = [], 0
    for index, chunk in enumerate(_chunks(opened.images, partition_size)):
        _check_labels(chunk, opened)
        table = _partition_table(chunk)
        parts.append(entry := _entry(store, dataset, index, table, old))
        if old is None or not store.exists(layout.dataset_path(dataset, entry["name"])):
            store.write_parquet(layout.dataset_path(dataset, entry["name"]), table)
            written += 1
        progress.update(table.num_rows, f"{index + 1} partitions")
    progress.say(f"{len(parts)} partitions, done")
    progress.close()
    return _commit(store, dataset, old, parts, written, opened.description, split, opened.classes, partition_size)


def _old_manifest(store: Store, dataset: str, classes: list[str]) -> DatasetManifest | None:
    """The dataset's committed manifest, if any; a source of other classes is refused."""
    manifest = layout.dataset_path(dataset, layout.DATASET_MANIFEST)
    old = DatasetManifest.from_dict(store.read_json(manifest)) if store.exists(manifest) else None
    if old is not None and old.classes != classes:
        raise _conflict(store, dataset, old, f"classes {classes}")
    return old


def _entry(store: Store, dataset: str, index: int, table: pa.Table, old: DatasetManifest | None) -> dict:
    """The manifest's entry of partition ``index``; a committed dataset's must be the same."""
    entry = {
        "name": layout.partition_name(index),
        "rows": table.num_rows,
        "labelled": table.num_rows - table["label"].null_count,
        "sha256": datasets.content_hash(table),
    }
    if old is not None and {p["name"]: p for p in old.partitions}.get(entry["name"]) != entry:
        raise _conflict(store, dataset, old, f"different images in {entry['name']}")
    return entry


def _commit(store: Store, dataset: str, old: DatasetManifest | None, parts: list[dict], written: int,
            description: str, split: str, classes: list[str], partition_size: int) -> IngestResult:
    """``dataset.json``, written last: the dataset is committed (a committed one is left as it is)."""
    if not parts:
        raise BatchmlError(f"{description} holds no images")
    if old is not None and len(parts) != len(old.partitions):
        raise _conflict(store, dataset, old, f"{len(parts)} partitions")
    rows = sum(p["rows"] for p in parts)
    if old is None:
        store.write_json(layout.dataset_path(dataset, layout.DATASET_MANIFEST), DatasetManifest(
            name=dataset, source=description, split=split, classes=classes,
            partition_size=partition_size, partitions=parts, rows=rows,
            labelled=sum(p["labelled"] for p in parts), fingerprint=_fingerprint(parts),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ).to_dict())
    return IngestResult(dataset, rows, len(parts), written, store.url(layout.dataset_path(dataset)))


def _chunks(images: Iterable[SourceImage], size: int) -> Iterator[list[SourceImage]]:
    it = iter(images)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _check_labels(chunk: list[SourceImage], opened: Source) -> None:
    bad = next((r for r in chunk if r.label is not None and not 0 <= r.label < len(opened.classes)), None)
    if bad is not None:
        raise BatchmlError(f"image {bad.image_id} of {opened.description} has label {bad.label}, outside its "
                           f"{len(opened.classes)} classes {opened.classes}: fix the source's labels")


def _partition_table(chunk: list[SourceImage]) -> pa.Table:
    table = datasets.partition_table([r.image_id for r in chunk], [r.data for r in chunk], [r.label for r in chunk])
    for key in sorted({k for r in chunk for k in r.extra}):
        table = table.append_column(key, pa.array([r.extra.get(key) for r in chunk]))
    return table


def _fingerprint(parts: list[dict]) -> str:
    return hashlib.sha256("".join(p["sha256"] for p in parts).encode()).hexdigest()


def _conflict(store: Store, dataset: str, old: DatasetManifest, what: str) -> BatchmlError:
    return BatchmlError(
        f"dataset {dataset!r} already exists from {old.source} and this source has {what}. "
        f"Ingest it under another --dataset name, or delete {store.url(layout.dataset_path(dataset))} first."
    )
