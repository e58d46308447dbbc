"""One partition scored, on a worker: read, decode, predict with the worker's cached model,
then its predictions, failure cases, errors and hashes written, and its statistics last (the
partition is done). What a task needs travels in a small ``RunSpec``; the model never does."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batchml import layout
from batchml.data import inputs
from batchml.data.health import InputHealth, measure
from batchml.data.images import DecodedBatch, Preprocessing, decode_batch
from batchml.device import device_info, device_lock, predict_fitting, start_batch
from batchml.errors import BatchmlError
from batchml.records import HASHES_SCHEMA, ScoredPartition
from batchml.registry import ModelVersion, load_model
from batchml.score import failures
from batchml.score.prefetch import Prefetcher
from batchml.score.segments import Segmenting, groups
from batchml.stats import BiasCorrection, PartitionStats
from batchml.store import Store, StoreConfig
from batchml.train.novelty import novelty_model, read_novelty


@dataclass(frozen=True)
class RunSpec:
    """What a partition task needs: small and picklable (the model itself never travels)."""

    store: StoreConfig
    run_id: str
    dataset: str  # the dataset name, or the prefix URL
    model: ModelVersion
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    temperature: float
    batch_size: int | None
    images: StoreConfig | None = None  # where a prefix's raw files live
    bcts: BiasCorrection | None = None  # the card's, for the MLLS/COT cells; None on older cards
    segmenting: Segmenting | None = None
    raw_orientation: bool = False
    diagnostics: bool = True  # input health and hashes; novelty too where ``novelty`` is set
    novelty: dict | None = None  # the card's novelty entry (``batchml.train.novelty``); None: no novelty


_MODELS: OrderedDict[tuple[str, str], object] = OrderedDict()
_MODEL_LOADS: Counter[str] = Counter()
_MODELS_LOCK = threading.Lock()
_MODELS_KEPT = 4  # models kept per worker process, least recently used dropped first
_SCORERS: OrderedDict[tuple[str, str], tuple] = OrderedDict()  # feature models and novelty references


def worker_model(store_cfg: StoreConfig, mv: ModelVersion):
    """The model, loaded once per worker process and kept (versions are immutable)."""
    key = (store_cfg.cache_key(), str(mv))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(Store(store_cfg), mv)
            _MODEL_LOADS[f"{store_cfg.root}|{mv}"] += 1
            while len(_MODELS) > _MODELS_KEPT:
                _MODELS.popitem(last=False)
        _MODELS.move_to_end(key)
        return _MODELS[key]


def model_loads() -> dict[str, int]:
    """Loads per ``<store root>|<model version>`` in this process (ask workers with ``client.run``)."""
    return dict(_MODEL_LOADS)


def worker_scorer(spec: RunSpec) -> tuple[object, bool]:
    """The model to predict with, built once per worker, and whether it also outputs novelty:
    with a novelty reference, ``train.novelty.novelty_model``."""
    model = worker_model(spec.store, spec.model)
    if not spec.novelty:
        return model, False
    key = (spec.store.cache_key(), str(spec.model))
    with _MODELS_LOCK:
        if key not in _SCORERS:
            scorer = novelty_model(model, read_novelty(Store(spec.store), spec.model, spec.novelty))
            _SCORERS[key] = (scorer, True) if scorer is not None else (model, False)
            while len(_SCORERS) > _MODELS_KEPT:
                _SCORERS.popitem(last=False)
        _SCORERS.move_to_end(key)
        return _SCORERS[key]


def warm_model(spec: RunSpec) -> None:
    """Load the run's model (and novelty scorer) into this worker's cache, ahead of its first partition."""
    worker_scorer(spec)


Then = tuple[str, tuple[str, ...] | None]  # the partition (and its files) a worker is likely to score next


def score_partition(spec: RunSpec, partition: str, files: tuple[str, ...] | None = None,
                    then: Then | None = None, sizes: tuple[int | None, ...] | None = None) -> ScoredPartition:
    """Score one input partition (a dataset's, or ``files`` of a prefix); writes predictions,
    failure cases, error rows and hashes, then its statistics. ``then``: read it ahead, in the
    background, once this partition's input is in memory (``prefetch``). ``sizes``: the files'
    sizes as the run listed them; a file read at another size fails the partition.

    Only inference holds the device lock: with two task threads per worker, one partition
    is read, decoded and written while the model runs on another.
    """
    store = Store(spec.store)
    timer = _Timer()
    table = _PREFETCHED.take(_input_key(spec, partition, files))
    if table is None:
        table = _read_input(spec, partition, files)
    if then is not None:
        _PREFETCHED.start(_input_key(spec, *then), functools.partial(_read_input, spec, *then))
    if sizes is not None:
        _check_sizes(spec, table, dict(zip(files, sizes, strict=True)))
    if table.num_rows == 0:
        raise BatchmlError(
            f"partition {partition} of dataset {spec.dataset!r} is empty: "
            f"delete it or ingest the dataset again"
        )
    labels = _labels(table, spec, partition)
    segments = spec.segmenting.values(table, partition) if spec.segmenting else None
    timer.lap("read")
    blobs = table["image"].to_pylist()
    decoded = decode_batch(blobs, spec.preprocessing, spec.raw_orientation, measure=spec.diagnostics)
    pixels, good, bad = decoded.pixels, decoded.good, decoded.bad
    timer.lap("decode")
    model, with_novelty = worker_scorer(spec)
    timer.lap("load")
    with device_lock():
        timer.lap("queue")
        probs, novelty, batch = _predict(model, with_novelty, pixels, spec)
        timer.lap("predict")

    health = measure([blobs[i] for i in good], pixels, decoded.received) if spec.diagnostics else None
    stats = _statistics(spec, probs, labels[good], len(bad), health, novelty, segments, good, list(bad))
    timer.lap("diagnose")
    ids = table["image_id"].take(good).to_pylist() if good else []
    row_segments = [segments[i] for i in good] if segments else None
    store.write_parquet(layout.run_output(spec.run_id, "predictions", partition),
                        _predictions(spec, partition, table, good, probs, decoded, novelty, row_segments))
    if health is not None:
        store.write_parquet(layout.run_hashes(spec.run_id, partition), _hashes(ids, health, probs, row_segments))
    copies = None if health is None else pd.Series(health.content_hash).duplicated().to_numpy()
    cases = failures.select(ids, partition, pixels, probs, labels[good], novelty, copies)
    if cases.num_rows:
        store.write_parquet(layout.run_output(spec.run_id, "failures", partition), cases)
    if bad:
        store.write_parquet(layout.run_output(spec.run_id, "errors", partition), _errors(table, partition, bad))
    timer.lap("write")
    record = ScoredPartition.written({
        "partition": partition,
        "rows": len(good),
        "errors": len(bad),
        "batch_size": batch,
        "stats": stats.to_dict(),
        "segment_by": spec.segmenting.name if spec.segmenting else None,
        "seconds": timer.laps,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "device": device_info(),
    })
    store.write_json(layout.run_stats(spec.run_id, partition), record.to_dict())  # last: the partition is done
    return record


_PREFETCHED = Prefetcher()


def _input_key(spec: RunSpec, partition: str, files: tuple[str, ...] | None) -> tuple:
    where = spec.images.cache_key() if spec.images else spec.store.cache_key()
    return where, spec.dataset, partition, hash(files)


def _read_input(spec: RunSpec, partition: str, files: tuple[str, ...] | None) -> pa.Table:
    return (inputs.read_files(spec.images, files, spec.classes) if files is not None
            else inputs.read_partition(Store(spec.store), spec.dataset, partition))


def _check_sizes(spec: RunSpec, table: pa.Table, listed: dict[str, int | None]) -> None:
    """A file read at another size than the run listed was replaced or is still being written:
    its bytes are not what the run pinned, so the partition is not scored from them."""
    read = zip(table["image_id"].to_pylist(), pc.binary_length(table["image"]).to_pylist(), strict=True)
    changed = [(f, listed[f], n) for f, n in read if listed.get(f) is not None and listed[f] != n]
    if changed:
        f, was, now = changed[0]
        raise BatchmlError(
            f"{len(changed)} file(s) under {spec.dataset} changed while run {spec.run_id!r} read them, e.g. {f}: "
            f"{was:,} bytes when the run listed it, {now:,} now (replaced, or an upload still under way). The "
            "partition is not committed: put the files back as they were and rerun the same --run-id, or score "
            "the prefix under a new --run-id once its uploads are done"
        )


def _predict(model, with_novelty: bool, pixels: np.ndarray, spec: RunSpec) -> tuple:
    """(probabilities (N, K), novelty (N,) or None, the batch size that fitted): one pass."""
    key, k = str(spec.model), len(spec.classes)
    batch = start_batch(spec.batch_size, key)
    if not len(pixels):
        return np.empty((0, k), np.float32), np.empty(0) if with_novelty else None, batch
    if not with_novelty:
        probs, batch = predict_fitting(model.predict_on_batch, pixels, batch, key)
        return probs, None, batch

    def both(x: np.ndarray) -> np.ndarray:  # one array, as predict_fitting stacks them: (N, K + 1)
        probs, novelty = model.predict_on_batch(x)
        return np.concatenate([np.asarray(probs), np.asarray(novelty).reshape(-1, 1)], axis=1)

    out, batch = predict_fitting(both, pixels, batch, key)
    return out[:, :k], out[:, k].astype(np.float64), batch


def _statistics(spec: RunSpec, probs: np.ndarray, labels: np.ndarray, errors: int, health: InputHealth | None,
                novelty: np.ndarray | None, segments: list[str] | None, good: list[int],
                bad: list[int]) -> PartitionStats:
    """The partition's statistics, with one set per segment where the run is segmented."""

    def of(rows: np.ndarray | slice, errors: int) -> PartitionStats:
        return PartitionStats.from_predictions(
            probs[rows], labels[rows], spec.temperature, errors=errors, bcts=spec.bcts,
            health=health.take(rows) if health is not None else None,
            novelty=novelty[rows] if novelty is not None else None)

    stats = of(slice(None), errors)
    if segments:
        stats.segments = {v: of(rows, n_bad) for v, (rows, n_bad) in groups(segments, good, bad).items()}
    return stats


def _labels(table: pa.Table, spec: RunSpec, partition: str) -> np.ndarray:
    """Label indices, -1 where unknown; a label outside the model's classes is a clear error."""
    labels = table["label"].fill_null(-1).to_numpy().astype(np.int64)
    bad = labels[(labels < -1) | (labels >= len(spec.classes))]
    if bad.size:
        raise BatchmlError(
            f"partition {partition} of {spec.dataset!r} has labels {sorted(set(bad.tolist()))[:5]} outside the "
            f"model's {len(spec.classes)} classes {list(spec.classes)}: fix its labels (null where unknown)"
        )
    return labels


def _predictions(spec: RunSpec, partition: str, table: pa.Table, good: list[int], probs: np.ndarray,
                 decoded: DecodedBatch, novelty: np.ndarray | None, segment: list[str] | None) -> pa.Table:
    n, k = probs.shape
    taken = table.take(pa.array(good, pa.int64()))
    predicted = probs.argmax(axis=1)
    columns = {
        "image_id": taken["image_id"],
        "predicted": pa.array(predicted, pa.int16()),
        "predicted_class": pa.array(np.asarray(spec.classes, dtype=object)[predicted] if n else [], pa.string()),
        "probability": pa.array(probs.max(axis=1) if n else [], pa.float32()),
        "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel(), pa.float32()), k),
        "label": taken["label"],
        "model_version": pa.array([str(spec.model)] * n, pa.string()),
        "run_id": pa.array([spec.run_id] * n, pa.string()),
        "partition": pa.array([partition] * n, pa.string()),
        # the EXIF orientation tag as received (null: none); applied unless --raw-orientation
        "exif_orientation": pa.array([r.orientation or None for r in decoded.received], pa.int16()),
        # distance to the training features over the card's threshold (above 1: novel); null: no reference
        "novelty": pa.array(novelty if novelty is not None else [None] * n, pa.float32()),
    }
    if segment is not None:
        columns["segment"] = pa.array(segment, pa.string())
    for name in taken.column_names:  # carried columns
        if name not in ("image", "image_id", "label") and name not in columns:
            columns[name] = taken[name]
    return pa.table(columns)


def _hashes(ids: list[str], health: InputHealth, probs: np.ndarray, segment: list[str] | None) -> pa.Table:
    return pa.table({
        "image_id": pa.array(ids, pa.string()),
        "content_hash": pa.array(health.content_hash, pa.uint64()),
        "perceptual_hash": pa.array(health.perceptual_hash, pa.uint64()),
        "predicted": pa.array(probs.argmax(axis=1), pa.int16()),
        "segment": pa.array(segment if segment is not None else [None] * len(ids), pa.string()),
    }, schema=HASHES_SCHEMA)


def _errors(table: pa.Table, partition: str, bad: dict[int, str]) -> pa.Table:
    ids = table["image_id"].to_pylist()
    return pa.table({
        "image_id": pa.array([ids[i] for i in bad], pa.string()),
        "partition": pa.array([partition] * len(bad), pa.string()),
        "reason": pa.array(list(bad.values()), pa.string()),
    })


class _Timer:
    """Seconds per stage; a stage lapped several times (per batch) adds up."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 4)
        self._last = now
