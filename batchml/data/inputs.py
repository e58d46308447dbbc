"""What a run scores: an ingested dataset, or a prefix of raw JPEG/PNG files (local or
``s3://``) grouped into partitions by sorted name, without a separate ingest.

Either way a run sees named partitions and a fingerprint of its input, so resuming a run
checks that the input has not changed since it started.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import pyarrow as pa

from batchml import layout
from batchml.data import datasets
from batchml.data.sources import IMAGE_SUFFIXES, check_utf8
from batchml.errors import BatchmlError
from batchml.store import Store, StoreConfig

# A file that cannot be read *now* (a timeout, a 5xx, a dropped connection) is not a bad
# image: it is read again after 0.5, 1 and 2 s, then its partition fails, so that the run
# is not committed and a rerun reads it again.
READ_ATTEMPTS = 4
READ_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class InputPlan:
    name: str  # the dataset name, or the prefix URL
    fingerprint: str
    classes: list[str] | None  # class names of the labels, where the input has labels
    partitions: dict[str, tuple[str, ...] | None]  # partition -> its files (a prefix) or None (a dataset)
    images: StoreConfig | None = None  # where a prefix's files live
    partition_size: int | None = None  # a prefix's files per partition; pinned by the run


def plan_dataset(store: Store, dataset: str) -> InputPlan:
    m = datasets.read_manifest(store, dataset)
    return InputPlan(dataset, m.fingerprint, m.classes if m.labelled else None,
                     {p["name"]: None for p in m.partitions})


def plan_prefix(url: str, storage_options: dict, partition_size: int) -> InputPlan:
    """Every .jpg/.jpeg/.png under ``url``, sorted by path, cut into partitions.

    Partitions are named by index, so the fingerprint covers the partition size as well
    as the listing: a resume cut differently would skip or repeat files."""
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
    names = check_utf8([p for p, _ in files], url)
    listing = "\n".join(f"{p} {s}" for p, s in files)
    fingerprint = hashlib.sha256(f"partition_size {partition_size}\n{listing}".encode()).hexdigest()
    parts = {layout.partition_name(i // partition_size): tuple(names[i:i + partition_size])
             for i in range(0, len(names), partition_size)}
    return InputPlan(url, fingerprint, None, parts, images.config, partition_size)


def read_files(images: StoreConfig, files: tuple[str, ...], classes: tuple[str, ...]) -> pa.Table:
    """A partition table from raw files; a parent folder named like a class gives the label.
    A file that cannot be read even after retries fails the partition (see ``READ_ATTEMPTS``)."""
    store = Store(images)
    blobs = _read_with_retries(store, [store.path(f) for f in files])
    labels = [classes.index(parts[-2]) if len(parts := f.split("/")) > 1 and parts[-2] in classes else None
              for f in files]
    return datasets.partition_table(list(files), [blobs[store.path(f)] for f in files], labels)


def _read_with_retries(store: Store, paths: list[str]) -> dict[str, bytes]:
    """Every path's bytes; raises BatchmlError when one is gone or still unreadable."""
    got: dict[str, bytes] = {}
    failed: dict[str, BaseException] = dict.fromkeys(paths, OSError("not read yet"))
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(READ_BACKOFF_SECONDS * 2 ** (attempt - 1))
        for path, blob in _cat(store, list(failed)).items():
            if isinstance(blob, bytes):
                got[path] = blob
                del failed[path]
            elif isinstance(blob, FileNotFoundError):
                raise BatchmlError(f"{store.fs.unstrip_protocol(path)} was listed when the run started and is "
                                   "gone now: restore it, or score what is there under a new --run-id")
            else:
                failed[path] = blob
        if not failed:
            return got
    path, exc = next(iter(failed.items()))
    raise BatchmlError(
        f"could not read {len(failed)} file(s) after {READ_ATTEMPTS} attempts, e.g. "
        f"{store.fs.unstrip_protocol(path)}: {type(exc).__name__}: {exc}. The partition is not committed: "
        "rerun the same --run-id once the storage answers again"
    )


def _cat(store: Store, paths: list[str]) -> dict[str, bytes | BaseException]:
    """One concurrent read of many files: each path's bytes or the exception that stopped it.
    (``cat_ranges``, not ``cat``: ``cat`` would take a name holding ``[`` or ``*`` for a glob.)"""
    try:
        return dict(zip(paths, store.fs.cat_ranges(paths, None, None, on_error="return"), strict=True))
    except Exception as exc:  # a failed call is retried like a failed file
        return dict.fromkeys(paths, exc)
