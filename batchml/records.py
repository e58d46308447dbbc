"""The JSON records under the store root, one class each: what a dataset manifest and a run
manifest hold (where they live: ``batchml.layout``).

Each has ``to_dict`` (what is written) and ``from_dict`` (what is read). ``schema_version``
counts changes of shape: files written before records had it read as version 0, and keys a
newer writer added are kept in ``extra`` and written back, so an older reader loses nothing.
Subscripting (``manifest["rows"]``) is kept for readers not yet moved to attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


class _Record:
    """``to_dict``/``from_dict`` for a dataclass with ``schema_version`` and ``extra``."""

    SCHEMA_VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {name: data.get(name) for name in names}  # a key older writers lacked reads as None
        known["schema_version"] = data.get("schema_version", 0)
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


@dataclass
class DatasetManifest(_Record):
    """``images/<dataset>/dataset.json``, written last by ingest: the dataset is committed."""

    name: str
    source: str  # a description of where the images came from
    split: str  # train | test
    classes: list[str]  # class names in label order
    partition_size: int  # images per partition (the last may hold fewer)
    partitions: list[dict]  # per partition: name, rows, labelled, sha256 (of ids, bytes and labels)
    rows: int
    labelled: int
    fingerprint: str  # sha256 over the partitions' hashes: any change of content changes it
    created_at: str  # UTC, ISO 8601
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)


@dataclass
class RunManifest(_Record):
    """``runs/<run_id>/manifest.json``, written last by scoring: the run is committed. It repeats
    ``run.json`` (what the run scores) and adds what came out."""

    run_id: str
    dataset: str  # the dataset name, or the prefix URL of raw files
    input: str  # dataset | images
    dataset_fingerprint: str
    partition_size: int | None  # a prefix's files per partition; a dataset's partitions are its own
    model_version: str  # NAME/vN (``batchml.layout.ModelVersion.parse``)
    model_ref: str  # as asked: a version or an alias
    created_at: str  # when the run started (UTC)
    classes: list[str]
    batch_size: int | str  # as asked, or "auto"; per partition: the size that fitted
    max_error_ratio: float
    rows: int  # predictions
    errors: int  # undecodable images
    labelled: int
    batch_sizes_used: list[int]
    devices: list[dict]  # where the partitions were computed: backend, device, framework versions
    partitions: list[dict]  # per partition: partition, rows, errors, batch_size, seconds, worker
    wall_seconds: float
    images_per_second: float | None  # of the partitions scored by this attempt; None if none were
    committed_at: str  # UTC, ISO 8601 with milliseconds
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)
