"""A labels file read and checked: Parquet or CSV with ``image_id`` and ``label`` (a class name or
index), optionally ``labelled_at`` and ``source``.

Every problem is collected (``LabelsError.problems``) rather than raised at the first, so that a
reviewer fixes the file once: ``batchml.labels.batches`` adds the ones only the run can tell
(unknown ids, conflicts) before anything is written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from batchml.errors import BatchmlError

REQUIRED = ("image_id", "label")
OPTIONAL = ("labelled_at", "source")
SHOWN = 5  # examples named per problem


class LabelsError(BatchmlError):
    """A labels file refused: ``problems`` lists each, with its fix; nothing was written."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file, self.problems = file, list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"labels file {file}: {len(self.problems)} problem(s), nothing was written:\n{lines}")


@dataclass
class LabelsFile:
    """The checked rows: ``image_id`` (string), ``label`` (int16 class index), ``labelled_at`` and
    ``source`` (strings, null where the file has none). ``problems``: what is wrong with the file itself."""

    path: str
    table: pa.Table
    problems: list[str] = field(default_factory=list)


def read_labels(path: str, classes: list[str]) -> LabelsFile:
    """The labels file at ``path`` (``.parquet``, ``.csv``) with each label resolved against the
    model's ``classes``; problems are collected in ``problems``, not raised."""
    raw = _read_table(path)
    missing = [c for c in REQUIRED if c not in raw.column_names]
    if missing:
        raise LabelsError(path, [f"no column {', '.join(map(repr, missing))} (it has {', '.join(raw.column_names)}): "
                                 "a labels file holds image_id and label (a class name or index), optionally "
                                 "labelled_at and source"])
    if raw.num_rows == 0:  # an export that went wrong: exiting 0 would say the labels are in
        raise LabelsError(path, ["no rows (only a header): export the labels again"])
    text = {c: _as_strings(path, raw, c) if c in raw.column_names else pa.nulls(raw.num_rows, pa.string())
            for c in (*REQUIRED, *OPTIONAL)}
    problems = []
    for c in REQUIRED:
        if nulls := text[c].null_count:
            problems.append(f"{nulls} row(s) without {c} (first at row {_first_null(text[c]) + 1}): "
                            "give every row an image_id and a label")
    labels, unknown = resolve_labels(text["label"], classes)
    if unknown:
        shown = ", ".join(repr(v) for v in sorted(unknown)[:SHOWN])
        problems.append(f"{sum(unknown.values())} row(s) with labels that are not the model's classes ({shown}"
                        f"{', ...' if len(unknown) > SHOWN else ''}): use a class name or index of "
                        f"{', '.join(f'{i}={c}' for i, c in enumerate(classes))}")
    problems += _duplicates(text["image_id"])
    table = pa.table({"image_id": text["image_id"], "label": labels, "labelled_at": text["labelled_at"],
                      "source": text["source"]})
    return LabelsFile(path, table, problems)


def resolve_labels(values: pa.Array, classes: list[str]) -> tuple[pa.Array, dict[str, int]]:
    """Class indices (int16, null where unresolved) of labels given as class names or indices, and
    the unresolved values with their row counts. A name wins over an index that reads the same."""
    encoded = pc.dictionary_encode(values).combine_chunks() if isinstance(values, pa.ChunkedArray) \
        else pc.dictionary_encode(values)
    names = {c: i for i, c in enumerate(classes)}
    mapping = np.array([_index(v, names, len(classes)) for v in encoded.dictionary.to_pylist()] + [-1], np.int64)
    codes = encoded.indices.fill_null(len(mapping) - 1).to_numpy(zero_copy_only=False)
    index = mapping[codes]
    unresolved = (index < 0) & ~np.asarray(encoded.is_null().to_numpy(zero_copy_only=False))
    counts = np.bincount(codes[unresolved], minlength=len(mapping))
    unknown = {encoded.dictionary[i].as_py(): int(n) for i, n in enumerate(counts[:-1]) if n}
    return pa.array(index, pa.int16(), mask=index < 0), unknown


def _index(value: str, names: dict[str, int], k: int) -> int:
    if value in names:
        return names[value]
    text = value.strip()
    # ASCII digits only: '\u00b2'.isdigit() holds but int() refuses it, and another script's digit is no index
    return int(text) if text.isascii() and text.isdigit() and int(text) < k else -1


def _read_table(path: str) -> pa.Table:
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            with open(path, "rb") as f:
                if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):  # what spreadsheet tools call "Unicode text"
                    raise BatchmlError(f"labels file {path} is encoded as UTF-16: save it as CSV in UTF-8 "
                                       "(e.g. 'CSV UTF-8' in a spreadsheet's Save As), then add it again")
            # every column as text: labels may be names or indices, ids may look like numbers
            return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in (*REQUIRED, *OPTIONAL)}, strings_can_be_null=True))
    except FileNotFoundError:
        raise BatchmlError(f"labels file {path}: no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise BatchmlError(f"labels file {path}: not readable as {suffix[1:]} ({exc}); fix or export it again") \
            from None
    raise BatchmlError(f"labels file {path}: expected a .parquet or .csv file")


def _as_strings(path: str, raw: pa.Table, name: str) -> pa.Array:
    column = raw[name].combine_chunks()
    try:
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if pa.types.is_floating(column.type):  # pandas writes integer labels with nulls as floats: 3.0
            valid = column.drop_null()
            if pc.all(pc.equal(pc.floor(valid), valid)).as_py() is not False:
                # inf or beyond int64 stays a float, named below as no class
                with contextlib.suppress(pa.ArrowInvalid):
                    column = pc.cast(column, pa.int64())
        return pc.cast(column, pa.string())
    except pa.ArrowException as exc:  # bytes that are not UTF-8, lists, structs
        raise LabelsError(path, [f"column {name!r} ({raw.schema.field(name).type}) cannot be read as text ({exc}): "
                                 "give image_id as text and label as a class name or index"]) from None


def _first_null(values: pa.Array) -> int:
    return int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])


def _duplicates(ids: pa.Array) -> list[str]:
    counts = pc.value_counts(ids.drop_null())
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if not len(repeated):
        return []
    shown = ", ".join(repr(v) for v in repeated.field("values")[:SHOWN].to_pylist())
    extra = int(pc.sum(repeated.field("counts")).as_py()) - len(repeated)
    return [f"{len(repeated)} image_id(s) appear more than once ({shown}{', ...' if len(repeated) > SHOWN else ''}; "
            f"{extra} extra row(s)): keep one row per image"]
