"""Is a stored file whole? One check per kind of file, shared by the readers that must not
trust a damaged file and by ``batchml doctor`` (which lists them all and repairs them).

A reader that can go on without a file (a monitoring table read as one table, the accepted
records) skips a damaged one with a ``DamagedFileWarning`` naming it; a reader that cannot
(folding a run's statistics) raises ``DamagedFileError``, which names the file and the repair.
"""

from __future__ import annotations

import io
import warnings
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchml import layout
from batchml.errors import BatchmlError
from batchml.records import ScoredPartition
from batchml.stats import OPTIONAL, PartitionStats
from batchml.store import Store

REPAIR = "run `batchml doctor --repair` (it moves the damaged file under quarantine/ and rebuilds it)"
# the statistics every record must hold as non-negative, finite sums: a NaN or a negative count
# would add into every total it is folded into, and no later night could tell
_COUNTED = ("rows", "errors", "labelled", "correct", "predicted_counts", "confusion", "prob_sums",
            "confidence_hist", "confidence_sum", "calibrated_confidence_sum", *OPTIONAL)


# the statistics that are single numbers (the others are arrays, whose shapes PartitionStats checks)
_SCALARS = ("rows", "errors", "labelled", "correct", "confidence_sum", "calibrated_confidence_sum",
            "duplicate_rows", "novel_rows", "novel_confidence_sum", "novel_labelled", "novel_correct")
_LARGEST = 2.0**53


class DamagedFileError(BatchmlError):
    """A stored file that cannot be trusted, with why and the command that repairs it."""

    def __init__(self, url: str, problem: str, fix: str = REPAIR) -> None:
        self.url, self.problem, self.fix = url, problem, fix
        super().__init__(f"{url} is damaged ({problem}): {fix}")


class DamagedFileWarning(UserWarning):
    """A damaged file a reader skipped (its message names it and the repair)."""


def skip_damaged(url: str, problem: str) -> None:
    """Warn that ``url`` was left out of what was read."""
    warnings.warn(f"skipped damaged file {url} ({problem}): {REPAIR}", DamagedFileWarning, stacklevel=3)


def read_json(store: Store, rel: str) -> Any:
    """A JSON file's content, or ``DamagedFileError`` where it is missing, torn or not JSON."""
    try:
        data = store.read_bytes(rel)
    except BatchmlError:
        if store.exists(rel):  # there but unreadable now: the store's error says why
            raise
        raise DamagedFileError(store.url(rel), "missing") from None
    try:
        return _strict_json(data)
    except ValueError as exc:
        raise DamagedFileError(store.url(rel), f"not JSON: {exc}") from None


def read_parquet(store: Store, rel: str, columns: list[str] | None = None, fix: str = REPAIR) -> pa.Table:
    """A Parquet file's table (``columns`` of it), or ``DamagedFileError`` where it is torn or not Parquet."""
    data = store.read_bytes(rel)
    try:
        return pq.read_table(io.BytesIO(data), columns=columns)
    except (pa.ArrowException, OSError) as exc:  # pyarrow raises several kinds for a torn file
        raise DamagedFileError(store.url(rel), f"not readable as Parquet ({type(exc).__name__}: {exc})",
                               fix) from None


def _strict_json(data: bytes) -> Any:
    import json

    def refuse(name: str):
        raise ValueError(f"{name} is not a number JSON allows")

    return json.loads(data, parse_constant=refuse)


def stats_problem(record: Any, partition: str) -> str:
    """What is wrong with a partition's statistics record ("" when it is whole)."""
    if not isinstance(record, dict) or not isinstance(record.get("stats"), dict):
        return "not a statistics record: no 'stats' object"
    if record.get("partition") != partition:
        return f"it names partition {record.get('partition')!r}, not {partition!r}"
    for name in _SCALARS:
        value = record["stats"].get(name)
        if (value is not None or name not in OPTIONAL) and (isinstance(value, bool)
                                                            or not isinstance(value, int | float)):
            return f"'{name}' is not a number: {str(value)[:40]}"
    try:
        stats = PartitionStats.from_dict(record["stats"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"its statistics do not parse ({type(exc).__name__}: {exc})"
    for name in _COUNTED:
        values = np.asarray(getattr(stats, name), dtype=np.float64)
        if not np.isfinite(values).all():
            return f"'{name}' holds NaN or infinity"
        if (values < 0).any():
            return f"'{name}' holds a negative count"
        if (values > _LARGEST).any():  # no night counts that many: a count tables could not hold either
            return f"'{name}' holds a count too large to be real"
    for name in ("rows", "errors"):
        if record.get(name) != getattr(stats, name):
            return f"'{name}' is {record.get(name)!r} but its statistics count {getattr(stats, name)}"
    if stats.labelled > stats.rows or stats.correct > stats.labelled or int(stats.predicted_counts.sum()) != stats.rows:
        return "its counts disagree (labelled, correct and predicted counts against rows)"
    return ""


def manifest_problem(data: Any) -> str:
    """What is wrong with a run manifest ("" when it is whole): a field of the wrong type would reach the
    monitoring table, where every later night's monitoring compares it."""
    if not isinstance(data, dict):
        return "not a JSON object"
    lacking = [k for k in ("run_id", "model_version", "classes", "partitions", "committed_at") if not data.get(k)]
    if lacking:
        return f"it lacks {', '.join(lacking)}"
    for key in ("run_id", "model_version", "dataset"):
        if key in data and not isinstance(data[key], str):
            return f"'{key}' is not text"
    for key in ("rows", "errors", "labelled", "max_error_ratio"):
        if data.get(key) is not None and (isinstance(data[key], bool) or not isinstance(data[key], int | float)):
            return f"'{key}' is not a number"
    if not isinstance(data["classes"], list) or not all(isinstance(c, str) for c in data["classes"]):
        return "'classes' is not a list of class names"
    try:
        datetime.fromisoformat(data["committed_at"])
    except (TypeError, ValueError):
        return f"'committed_at' is not an ISO time: {str(data['committed_at'])[:40]}"
    return "" if isinstance(data["partitions"], list) and all(
        isinstance(p, dict) and isinstance(p.get("partition"), str) and p["partition"] for p in data["partitions"]) \
        else "its partitions are not named"


def read_stats(store: Store, run_id: str, partition: str) -> ScoredPartition:
    """A partition's statistics record (``runs/<id>/stats/part-N.json``), checked whole."""
    rel = layout.run_stats(run_id, partition)
    record = read_json(store, rel)
    if problem := stats_problem(record, partition):
        raise DamagedFileError(store.url(rel), problem)
    return ScoredPartition.from_dict(record)
