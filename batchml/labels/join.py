"""Labels joined to a run's predictions, partition by partition, and the statistics they change.

The join reads a few columns of one predictions file at a time and keeps only the rows whose id
is labelled: memory grows with the labels, not with the predictions. ``delta`` turns matched rows
into the change of ``batchml.stats.LABEL_FIELDS``, computed as scoring computes them
(``PartitionStats.from_predictions``), so that late labels give exactly what the same labels give at
ingest.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchml import layout
from batchml.integrity import REPAIR, DamagedFileError
from batchml.records import ScoredPartition
from batchml.stats import LABEL_FIELDS, OTHER_SEGMENT, PartitionStats, labelled_by_confidence
from batchml.store import Store

# what the join reads of a predictions file: the ingest label, and what the label-dependent
# statistics need (the novelty and segment columns are absent or null where not measured)
COLUMNS = ("image_id", "predicted", "probability", "label", "novelty", "segment")


def match_partition(store: Store, run_id: str, partition: str, ids: pa.Array) -> pa.Table:
    """The prediction rows of ``partition`` whose ``image_id`` is in ``ids``: ``COLUMNS`` (null
    where the run lacks one), with ``partition`` and ``stats_segment`` (the segment key its row
    counts under in the partition's statistics)."""
    # one read of the object, then only the columns the join needs are decoded
    rel = layout.run_output(run_id, "predictions", partition)
    try:
        file = pq.ParquetFile(io.BytesIO(store.read_bytes(rel)))
        table = file.read(columns=[c for c in COLUMNS if c in file.schema_arrow.names])
    except (pa.ArrowException, OSError) as exc:  # torn, or not Parquet: named with its repair, nothing written
        raise DamagedFileError(store.url(rel), f"not readable as Parquet ({type(exc).__name__}: {exc})",
                               REPAIR) from None
    table = table.filter(pc.is_in(table["image_id"], value_set=ids))
    n = table.num_rows
    columns = {c: table[c] if c in table.column_names else pa.nulls(n, _TYPES[c]) for c in COLUMNS}
    columns["label"] = pc.cast(columns["label"], pa.int16())
    columns["partition"] = pa.array([partition] * n, pa.string())
    columns["stats_segment"] = _stats_segments(store, run_id, partition, columns["segment"]) \
        if n and columns["segment"].null_count < n else pa.nulls(n, pa.string())
    return pa.table(columns)


_TYPES = {"image_id": pa.string(), "predicted": pa.int16(), "probability": pa.float32(), "label": pa.int16(),
          "novelty": pa.float32(), "segment": pa.string()}


def _stats_segments(store: Store, run_id: str, partition: str, segment: pa.ChunkedArray) -> pa.Array:
    """Each row's segment as its partition's statistics keep it: its value where the value is among
    the partition's top values, else ``OTHER_SEGMENT`` (``batchml.score.segments.groups``)."""
    kept = list((ScoredPartition.read(store, run_id, partition).stats.get("segments") or {}).keys())
    inside = pc.is_in(segment, value_set=pa.array(kept, pa.string()))
    return pc.if_else(inside, segment, pa.scalar(OTHER_SEGMENT))


def delta(rows: pa.Table, k: int) -> PartitionStats:
    """The change in the label fields when ``rows`` (matched rows with ``label`` the new class
    index and ``previous`` the one replaced, null for none) are labelled; per segment too."""
    out = _signed(rows, k)
    segment = rows["stats_segment"].to_numpy(zero_copy_only=False)
    for value in sorted({v for v in segment if v is not None}):
        out.segments[value] = _signed(rows.filter(pa.array(segment == value)), k)
    return out


def _signed(rows: pa.Table, k: int) -> PartitionStats:
    """The new labels' contribution less the replaced labels' (``LABEL_FIELDS`` only)."""
    new = _contribution(rows, rows["label"], k)
    if rows["previous"].null_count < rows.num_rows:  # some rows replace an earlier label
        old = _contribution(rows, rows["previous"], k)
        return PartitionStats(k, **{f: getattr(new, f) - getattr(old, f) for f in LABEL_FIELDS})
    return new


def _contribution(rows: pa.Table, label_column: pa.ChunkedArray, k: int) -> PartitionStats:
    """What these rows labelled ``label_column`` (null: unlabelled) add, as scoring counts it."""
    labels = label_column.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    predicted = rows["predicted"].to_numpy(zero_copy_only=False).astype(np.int64)
    top = rows["probability"].to_numpy(zero_copy_only=False)
    known = labels >= 0
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels[known], predicted[known]), 1)
    novelty = rows["novelty"]
    novel_known = known & _novel(novelty) if novelty.null_count < len(novelty) else np.zeros(len(labels), bool)
    return PartitionStats(
        k, labelled=int(known.sum()), correct=int((predicted[known] == labels[known]).sum()), confusion=confusion,
        novel_labelled=int(novel_known.sum()), novel_correct=int((predicted[novel_known] == labels[novel_known]).sum()),
        **labelled_by_confidence(top, predicted, labels))


def _novel(novelty: pa.ChunkedArray) -> np.ndarray:
    """Rows scored as novel, as scoring decides it (above 1.0; ``stats._novelty_fields``)."""
    return np.nan_to_num(novelty.to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0) > 1.0


def delta_dict(stats: PartitionStats) -> dict:
    """The label fields of a delta, as its ``LabelBatch`` record keeps them."""
    out = {f: _plain(getattr(stats, f)) for f in LABEL_FIELDS}
    if stats.segments:
        out["segments"] = {v: delta_dict(s) for v, s in stats.segments.items()}
    return out


def delta_stats(d: dict, k: int) -> PartitionStats:
    """A ``LabelBatch.delta`` read back as statistics that add to a run's."""
    segments = {v: delta_stats(s, k) for v, s in (d.get("segments") or {}).items()}
    return PartitionStats(k, **{f: d.get(f) for f in LABEL_FIELDS}, segments=segments)


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value
