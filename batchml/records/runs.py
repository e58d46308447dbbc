"""The files of a dataset and a run: what ingest commits, what scoring pins first, writes per
partition and commits last (the protocol: ``batchml.score.run``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from batchml import layout
from batchml.records.base import _Record


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
class RunStart(_Record):
    """``runs/<run_id>/run.json``, written first by scoring: it ties the run id to its input and
    model, so that a resumed run scores the same images with the same version."""

    run_id: str
    dataset: str  # the dataset name, or the prefix URL of raw files
    input: str  # dataset | images
    dataset_fingerprint: str  # a prefix's covers its listing and its cut into partitions
    partition_size: int | None  # a prefix's files per partition; None for a dataset's own partitions
    model_version: str  # NAME/vN (``batchml.layout.ModelVersion.parse``)
    model_ref: str  # as asked: a version or an alias
    created_at: str  # UTC, ISO 8601
    # how its rows are segmented and read: a resume, an append or a repair scores the same way
    # (None: a run started before they were pinned)
    segment_by: str | None = None
    segment_from_path: str | None = None
    raw_orientation: bool | None = None
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, store, run_id: str) -> RunStart:
        """The run's start record (``store``: a ``batchml.store.Store``)."""
        return cls.from_dict(store.read_json(layout.run_path(run_id, layout.RUN_SPEC)))


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

    @classmethod
    def read(cls, store, run_id: str) -> RunManifest:
        """The committed run's manifest (``store``: a ``batchml.store.Store``); a torn one is a
        ``DamagedFileError`` naming it and the repair."""
        from batchml.integrity import DamagedFileError, manifest_problem, read_json

        rel = layout.run_path(run_id, layout.RUN_MANIFEST)
        data = read_json(store, rel)
        if problem := manifest_problem(data):
            raise DamagedFileError(store.url(rel), problem)
        try:
            return cls.from_dict(data)
        except (AttributeError, TypeError) as exc:  # not an object, or keys of another shape
            raise DamagedFileError(store.url(rel), f"not a run manifest: {exc}") from None


@dataclass
class ScoredPartition(_Record):
    """``runs/<run_id>/stats/part-N.json``, written last for a partition by scoring: the partition
    is done. Its statistics are what monitoring folds; the rest says how it was computed."""

    partition: str  # the input partition's name, part-NNNNN.parquet
    rows: int  # predictions
    errors: int  # undecodable images
    batch_size: int | None  # images per predict call, as fitted on the device
    stats: dict  # ``batchml.stats.PartitionStats.to_dict``: the mergeable statistics
    seconds: dict[str, float]  # per stage: read, decode, load, queue, predict, write
    worker: str  # host:pid
    device: dict | None  # where it was computed (``batchml.device.device_info``)
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, store, run_id: str, partition: str) -> ScoredPartition:
        """A scored partition of the run (``store``: a ``batchml.store.Store``)."""
        return cls.from_dict(store.read_json(layout.run_stats(run_id, partition)))


# recent nights (``batchml.data.health``: ``content_hashes``, ``dhash``, ``hamming``)
HASHES_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("content_hash", pa.uint64()),  # BLAKE2b of the bytes as received: equal for exact duplicates
    ("perceptual_hash", pa.uint64()),  # dHash of the model input: near duplicates differ in few bits
    ("predicted", pa.int16()),  # the predicted class, for de-duplicated class mixes
    ("segment", pa.string()),  # the row's segment value; null when the run is not segmented
])


# -- late labels ------------------------------------------------------------------------------------

SAMPLINGS = ("random", "uncertain", "other")  # how a batch of late labels was chosen (``LabelBatch.sampling``)
# ``runs/<id>/labels/<batch>.parquet``: one row per image of the batch whose label is new or replaced
LABEL_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("partition", pa.string()),
    ("label", pa.int16()),  # the class index
    ("previous", pa.int16()),  # the label it replaced (at ingest or by an earlier batch); null: none
    ("labelled_at", pa.string()),  # as the file gave it; null where it did not
    ("source", pa.string()),
])


@dataclass
class LabelBatch(_Record):
    """``runs/<run_id>/labels/commit-NNNNN.json`` (``batchml.labels``): a batch of late labels, written
    after its rows (``layout.label_rows``): the batch counts once this exists. ``delta`` is what it adds
    to the run's summed statistics, so monitoring folds labels without reading them."""

    batch_id: str  # a digest of the rows and how they were drawn: the same content is the same batch
    run_id: str
    sequence: int  # the commit number in its run: batches apply in this order
    file: str  # the labels file as given
    sampling: str  # random | uncertain | other (``SAMPLINGS``)
    replace: bool  # whether it could replace earlier labels
    rows: int  # rows of the file that matched the run's predictions
    new: int  # images labelled for the first time
    replaced: int  # images whose earlier label it replaced
    unchanged: int  # rows that repeat the label already known (not stored again)
    # ``batchml.stats.LABEL_FIELDS`` of the change, and per segment: a replaced label's old
    # contribution is subtracted
    delta: dict
    created_at: str  # UTC, ISO 8601
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)
