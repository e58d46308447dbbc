"""Segments: the rows of a run grouped by where they came from (a camera, a site), so that every
statistic, and so every alert, can name the segment that moved.

A segment is a carried column's value (``batchml score --segment-by camera``) or, for a prefix of
files, a part of each file's path (``--segment-from-path '{camera}/**'``; class folders below it
keep giving labels). Each partition keeps full statistics for its ``TOP_SEGMENTS`` values by rows
and one ``OTHER_SEGMENT`` for the rest (``PartitionStats.segments``); rows without a value are
the segment ``MISSING_SEGMENT``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from batchml.errors import BatchmlError
from batchml.stats import MISSING_SEGMENT, OTHER_SEGMENT

TOP_SEGMENTS = 20  # segment values per partition kept apart; the rest are summed as OTHER_SEGMENT
_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Segmenting:
    """How rows are segmented: by a carried ``column``, or by a ``path_pattern`` over the file paths
    of a prefix (one ``{name}`` capture; ``*`` any one name, ``**`` any number of folders)."""

    column: str | None = None
    path_pattern: str | None = None

    @property
    def name(self) -> str:
        """What the segments are of: the column, or the pattern's capture name."""
        return self.column or _CAPTURE.search(self.path_pattern).group(1)

    def values(self, table: pa.Table, partition: str) -> list[str]:
        """Each row's segment value (``MISSING_SEGMENT`` where it has none)."""
        if self.path_pattern:
            regex = path_regex(self.path_pattern)
            return [m.group(1) if (m := regex.fullmatch(p)) else MISSING_SEGMENT
                    for p in table["image_id"].to_pylist()]
        if self.column not in table.column_names:
            carried = [c for c in table.column_names if c not in ("image", "image_id", "label")]
            raise BatchmlError(f"partition {partition} has no column {self.column!r} to segment by (its carried "
                               f"columns: {', '.join(carried) or 'none'}): pass one of them to --segment-by")
        return [MISSING_SEGMENT if v is None else str(v) for v in table[self.column].to_pylist()]


def segmenting(column: str | None, path_pattern: str | None, images: bool) -> Segmenting | None:
    """The segmenting asked for, checked before anything is scored; None when not asked."""
    if column and path_pattern:
        raise BatchmlError("pass --segment-by COLUMN or --segment-from-path PATTERN, not both")
    if path_pattern and not images:
        raise BatchmlError("--segment-from-path reads the paths of --images files; a dataset's rows are segmented "
                           "by a carried column: pass --segment-by COLUMN")
    if path_pattern:
        path_regex(path_pattern)
    if column is not None and not column:
        raise BatchmlError("--segment-by needs a column name")
    return Segmenting(column, path_pattern) if column or path_pattern else None


def path_regex(pattern: str) -> re.Pattern:
    """``'{camera}/**'`` -> a regex whose one group is the camera folder; refuses other shapes."""
    names = _CAPTURE.findall(pattern)
    if len(names) != 1:
        raise BatchmlError(f"--segment-from-path {pattern!r} must name one part of the path in braces, "
                           "e.g. '{camera}/**' (the first folder) or '**/{site}/*' (the folder above each file)")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif (m := _CAPTURE.match(pattern, i)):
            out, i = out + "([^/]+)", m.end()
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def groups(values: list[str], good: list[int], bad: list[int],
           top: int = TOP_SEGMENTS) -> dict[str, tuple[np.ndarray, int]]:
    """Segment -> (its prediction rows, as indices into ``good``; its error rows' count). ``values``:
    each input row's segment; the ``top`` values by rows, ties by name, stay apart, the rest are
    ``OTHER_SEGMENT``."""
    counts = Counter(values)
    kept = {v for v, _ in sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[:top]}
    key = np.array([v if v in kept else OTHER_SEGMENT for v in values], dtype=object)
    good_keys, bad_keys = key[np.asarray(good, np.int64)], Counter(key[np.asarray(bad, np.int64)].tolist())
    return {v: (np.flatnonzero(good_keys == v), bad_keys.get(v, 0)) for v in sorted(set(key.tolist()))}
