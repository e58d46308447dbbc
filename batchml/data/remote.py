"""Class folders (or a flat prefix) of image objects under any fsspec URL, as an ingest source:
``batchml ingest s3://bucket/prefix/``.

The listing is streamed (``listing``), the objects read a partition at a time with as many
requests in flight as the store's latency needs (``fetch``), and the next partition's objects
are read while the current one is written. A partition already written by an ingest that
stopped (same image ids, same sizes) is kept, not read again: the ingest resumes.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from batchml.data import datasets
from batchml.data.inputs import image_files, read_with_retries
from batchml.data.listing import iter_listing
from batchml.data.sources import image_record, split_files
from batchml.errors import BatchmlError
from batchml.store import Store, StoreConfig


@dataclass(frozen=True)
class RemoteImage:
    name: str  # the object's name under the prefix
    size: int | None
    parts: tuple[str, ...]  # its path within the split: (class, file) or (file,)


@dataclass(frozen=True)
class RemotePrefix:
    description: str
    split: str
    classes: list[str]
    images: StoreConfig
    files: list[RemoteImage]  # sorted by name

    def chunks(self, size: int) -> list[list[RemoteImage]]:
        return [self.files[i:i + size] for i in range(0, len(self.files), size)]

    def read(self, chunk: list[RemoteImage]) -> pa.Table:
        """The chunk's partition table, its objects read concurrently (retried as scoring's reads are)."""
        store = Store(self.images)
        blobs = read_with_retries(store, [store.path(f.name) for f in chunk])
        records = [image_record(f.parts, self.split, blobs[store.path(f.name)], self.classes) for f in chunk]
        return datasets.partition_table([r.image_id for r in records], [r.data for r in records],
                                        [r.label for r in records])

    def image_ids(self, chunk: list[RemoteImage]) -> list[str]:
        return ["/".join((self.split, *f.parts)) for f in chunk]

    def written_already(self, chunk: list[RemoteImage], table: pa.Table) -> bool:
        """Whether ``table`` (a partition an earlier ingest wrote) holds exactly this chunk's objects."""
        if table["image_id"].to_pylist() != self.image_ids(chunk):
            return False
        lengths = pc.binary_length(table["image"]).to_pylist()
        return all(f.size is None or f.size == n for f, n in zip(chunk, lengths, strict=True))


def is_url(source: str) -> bool:
    """A source on some filesystem other than the local one (``s3://``, ``gs://``, ``memory://``...)."""
    return "://" in source and not source.startswith("file://")


def list_prefix(url: str, storage_options: dict, split: str, classes: list[str] | None) -> RemotePrefix:
    images = Store(StoreConfig(url.rstrip("/"), storage_options))
    files, _ = image_files(iter_listing(images.fs, images.path("")))
    if not files:
        raise BatchmlError(f"no image files under {url}: check the prefix, and --storage-options for its "
                           "endpoint and keys")
    sizes = dict(files)
    chosen, names = split_files([f for f, _ in files], split, classes, url)
    return RemotePrefix(f"{url} (split {split})", split, names, images.config,
                        [RemoteImage(n, sizes[n], parts) for n, parts in chosen])


class ReadAhead:
    """One chunk read in the background while the caller writes the one before."""

    def __init__(self, prefix: RemotePrefix) -> None:
        self.prefix = prefix
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batchml-ingest-read")
        self._pending: dict[int, Future] = {}

    def start(self, index: int, chunk: list[RemoteImage]) -> None:
        if index not in self._pending:
            self._pending[index] = self._pool.submit(self.prefix.read, chunk)

    def take(self, index: int, chunk: list[RemoteImage]) -> pa.Table:
        self.start(index, chunk)
        return self._pending.pop(index).result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
