"""What a run scores: an ingested dataset, or a prefix of raw image files (local or
``s3://``) grouped into partitions by sorted name, without a separate ingest.

Either way a run sees named partitions and a fingerprint of its input; a prefix's plan also
lists each file and its size, so a rerun can say which files are new, missing or changed
since the run started (``ListingChange``) and score only the new ones (``--append``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from batchml import layout
from batchml.data import datasets
from batchml.data.fetch import fetch_many
from batchml.data.listing import Listed, iter_listing
from batchml.data.sources import IMAGE_SUFFIXES, check_utf8
from batchml.errors import BatchmlError
from batchml.store import REMOTE_ERRORS, Store, StoreConfig

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
    sizes: dict[str, int | None] = field(default_factory=dict)  # a prefix's file -> its size in bytes
    skipped: dict[str, list[str]] = field(default_factory=dict)  # why -> files under the prefix not scored


@dataclass(frozen=True)
class ListingChange:
    """How a prefix differs from the files a run pinned."""

    new: list[str]  # listed now, not in the run
    missing: list[str]  # in the run, gone from the prefix
    changed: list[str]  # in both, another size now

    def __bool__(self) -> bool:
        return bool(self.new or self.missing or self.changed)

    def describe(self) -> str:
        """"3 new files (a.png, b.png, c.png), 1 missing (d.png)"."""
        parts = [f"{len(names)} {what} ({some(names)})" for what, names in
                 (("new files", self.new), ("missing", self.missing), ("changed in size", self.changed)) if names]
        return ", ".join(parts)


def listing_change(pinned: dict[str, int | None], current: dict[str, int | None]) -> ListingChange:
    """The files of ``current`` (name -> size) that ``pinned`` lacks, has no more, or had at another size."""
    return ListingChange(
        new=sorted(set(current) - set(pinned)),
        missing=sorted(set(pinned) - set(current)),
        changed=sorted(f for f in set(pinned) & set(current)
                       if None not in (pinned[f], current[f]) and pinned[f] != current[f]),
    )


def some(names: list[str], shown: int = 3) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def cut(files: list[str], partition_size: int, first: int = 0) -> dict[str, tuple[str, ...]]:
    """``files`` in order, cut into partitions named from the ``first``-th on."""
    return {layout.partition_name(first + i // partition_size): tuple(files[i:i + partition_size])
            for i in range(0, len(files), partition_size)}


def plan_dataset(store: Store, dataset: str) -> InputPlan:
    m = datasets.read_manifest(store, dataset)
    return InputPlan(dataset, m.fingerprint, m.classes if m.labelled else None,
                     {p["name"]: None for p in m.partitions})


def plan_prefix(url: str, storage_options: dict, partition_size: int) -> InputPlan:
    """Every image file (``IMAGE_SUFFIXES``) under ``url``, sorted by path, cut into partitions.
    What else is there is in ``skipped``, by reason: another kind of file, or not a regular
    file at all (a FIFO or a device would block the read that opened it: never opened).

    The listing is streamed page by page (``listing``); the client keeps a name and a size per file.
    Partitions are named by index, so the fingerprint covers the partition size as well
    as the listing: a resume cut differently would skip or repeat files."""
    images = Store(StoreConfig(url.rstrip("/"), storage_options))
    root = images.path("")
    try:
        if images.fs.isfile(root):
            raise BatchmlError(f"--images {url} is a file: it takes a folder or prefix of images; put the file "
                               "in a folder of its own and pass the folder")
        files, skipped = image_files(iter_listing(images.fs, root))
    except BatchmlError:
        raise
    except PermissionError as exc:
        raise BatchmlError(f"cannot list --images {url}: access denied ({exc}): check its permissions or the "
                           "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --storage-options)") from exc
    except REMOTE_ERRORS as exc:
        raise BatchmlError(f"cannot list --images {url}: {type(exc).__name__}: {exc}. Check that the endpoint "
                           "is up and the bucket exists (--storage-options)") from exc
    if not files:
        where = " (or its bucket does not exist)" if "://" in url else ""
        raise BatchmlError(f"no {'/'.join(IMAGE_SUFFIXES)} files under {url}{where}: check the prefix "
                           "(or pass --dataset)")
    names = check_utf8([p for p, _ in files], url)
    digest = hashlib.sha256(f"partition_size {partition_size}\n".encode())
    for i, (p, s) in enumerate(files):
        digest.update(f"{chr(10) if i else ''}{p} {s}".encode())
    return InputPlan(url, digest.hexdigest(), None, cut(names, partition_size), images.config, partition_size,
                     dict(files), skipped)


NOT_REGULAR = ("not a regular file (a FIFO, socket or device, a link to a folder or to nothing, or a folder "
               "this user cannot read): never opened")


def image_files(listed: Iterable[Listed]) -> tuple[list[tuple[str, int | None]], dict[str, list[str]]]:
    """(the image files of a listing as (name, size), sorted by name; the rest by why it is skipped)."""
    files, skipped = [], {}
    for entry in listed:
        if entry.kind != "file":
            skipped.setdefault(NOT_REGULAR, []).append(entry.name)
        elif not entry.name.lower().endswith(IMAGE_SUFFIXES):
            skipped.setdefault(f"not an image file ({'/'.join(IMAGE_SUFFIXES)})", []).append(entry.name)
        else:
            files.append((entry.name, entry.size))
    files.sort()
    return files, {why: sorted(names) for why, names in skipped.items()}


def skipped_notices(plan: InputPlan) -> list[str]:
    """A line per reason some files under a prefix are not scored."""
    return [f"{len(names)} file(s) under {plan.name} skipped, {why}: {some(names)}"
            for why, names in plan.skipped.items()]


def unknown_label_folders(plan: InputPlan, classes: list[str]) -> list[str]:
    """Parent folders of a prefix's files that are not class names: their files score unlabelled."""
    return sorted({parts[-2] for f in plan.sizes if len(parts := f.split("/")) > 1 and parts[-2] not in classes})


def read_partition(store: Store, dataset: str, partition: str) -> pa.Table:
    """An ingested partition, or a clear error naming the damaged file and the fix."""
    try:
        return datasets.read_partition(store, dataset, partition)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BatchmlError(
            f"input partition {store.url(layout.dataset_path(dataset, partition))} is damaged "
            f"({type(exc).__name__}: {exc}): ingest dataset {dataset!r} again (`batchml doctor` lists what "
            "else depends on it)") from exc


def read_files(images: StoreConfig, files: tuple[str, ...], classes: tuple[str, ...]) -> pa.Table:
    """A partition table from raw files; a parent folder named like a class gives the label.
    A file that cannot be read even after retries fails the partition (see ``READ_ATTEMPTS``)."""
    store = Store(images)
    blobs = read_with_retries(store, [store.path(f) for f in files])
    labels = [classes.index(parts[-2]) if len(parts := f.split("/")) > 1 and parts[-2] in classes else None
              for f in files]
    return datasets.partition_table(list(files), [blobs[store.path(f)] for f in files], labels)


def read_with_retries(store: Store, paths: list[str]) -> dict[str, bytes]:
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
    """One concurrent read of many files: each path's bytes or the exception that stopped it,
    with as many requests in flight as the store's latency needs (``fetch``). (``cat_file`` per
    path, never ``cat``: ``cat`` would take a name holding ``[`` or ``*`` for a glob.)"""
    try:
        return fetch_many(store.fs, paths)
    except Exception as exc:  # a failed call is retried like a failed file
        return dict.fromkeys(paths, exc)
