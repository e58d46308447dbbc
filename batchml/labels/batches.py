"""``add_labels``: a labels file checked against the runs it names and stored as one batch per run;
``committed`` and ``late_delta``: the batches monitoring folds.

A batch is ``runs/<id>/labels/<batch>.parquet`` (its rows) and then ``commit-NNNNN.json`` (its
``LabelBatch`` record, created exclusively): a batch counts only once its record exists, so a crash
between the two leaves nothing half-visible, and two writers cannot both take the same place in the
order. The batch id is a digest of its content: adding the same labels again finds them known and
writes nothing. Predictions are never rewritten.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from batchml import layout
from batchml.errors import BatchmlError
from batchml.integrity import DamagedFileError, read_json, read_parquet
from batchml.labels.file import SHOWN, LabelsError, read_labels
from batchml.labels.join import delta, delta_dict, delta_stats, match_partition
from batchml.records import LABEL_SCHEMA, SAMPLINGS, LabelBatch, RunManifest
from batchml.stats import PartitionStats
from batchml.store import Store


@dataclass
class AddedLabels:
    """What ``add_labels`` did for one run: the batch written (None when nothing was new) and its counts."""

    run_id: str
    batch: LabelBatch | None
    rows: int  # rows of the file matched in the run
    new: int
    replaced: int
    unchanged: int
    already_added: bool = False  # the same batch was committed before: nothing written


def add_labels(store: Store, file: str, run_ids: list[str] | None = None, since: str | None = None,
               until: str | None = None, sampling: str = "random", replace: bool = False) -> list[AddedLabels]:
    """Add the labels in ``file`` to the run(s) ``run_ids``, or to the committed runs of [since, until]
    (ISO dates, matching ids across them). Every problem (unreadable file, unknown classes, duplicated
    rows, ids in no run, labels that conflict with earlier ones unless ``replace``) is reported in one
    ``LabelsError`` before anything is written."""
    if sampling not in SAMPLINGS:
        raise BatchmlError(f"sampling {sampling!r}: use one of {', '.join(SAMPLINGS)}")
    if run_ids is None and since is None and until is None:
        raise BatchmlError("say which runs the labels are for: run ids, or a range of commit dates (since/until)")
    runs = [RunManifest.read(store, r) for r in _committed(store, run_ids)] if run_ids is not None \
        else runs_between(store, since, until)
    classes = _one_class_list(runs)
    labels = read_labels(file, classes)
    problems = list(labels.problems)
    if problems:  # ids and conflicts are judged on a clean file
        raise LabelsError(file, problems)
    ids = labels.table["image_id"]
    plans, found = [], pa.array([], pa.string())
    for run in runs:
        plan = _plan(store, run, labels.table)
        plans.append(plan)
        found = pa.concat_arrays([found, plan.rows["image_id"].combine_chunks()])
        if plan.conflicts.num_rows and not replace:
            problems.append(_conflict_problem(run.run_id, plan.conflicts, classes))
    if ambiguous := _ambiguous(runs, plans):
        problems.append(ambiguous)
    missing = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=found)))
    if len(missing):
        where = f"run {runs[0].run_id}" if len(runs) == 1 else f"the {len(runs)} runs committed in the range"
        more = ", ..." if len(missing) > SHOWN else ""
        problems.insert(0, f"{len(missing)} image_id(s) are in no prediction of {where} "
                        f"({', '.join(map(repr, missing[:SHOWN].to_pylist()))}{more}): "
                        "check the run id or dates (undecodable images have no prediction to label)")
    if problems:
        raise LabelsError(file, problems)
    return [_commit(store, plan, file, sampling, replace, len(classes)) for plan in plans]


def _ambiguous(runs: list[RunManifest], plans: list[_Plan]) -> str:
    """The ids of a range that name images of different inputs (each night's prefix or dataset numbers its
    files alike: img0001.png every night): one label cannot say which night's image it is. Runs of
    the same input (a dataset scored again, by another model) hold the same images: each takes the label."""
    inputs: dict[str, dict[str, str]] = {}  # image_id -> input -> the first run of it matched
    for run, plan in zip(runs, plans, strict=True):
        for i in plan.rows["image_id"].to_pylist():
            inputs.setdefault(i, {}).setdefault(run.dataset, run.run_id)
    repeated = sorted(i for i, where in inputs.items() if len(where) > 1)
    if not repeated:
        return ""
    def where(i: str) -> str:
        runs = list(inputs[i].values())
        return ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")

    shown = "; ".join(f"{i!r} in {where(i)}" for i in repeated[:SHOWN])
    return (f"{len(repeated)} image_id(s) name images of more than one night's input in the range ({shown}"
            f"{'; ...' if len(repeated) > SHOWN else ''}): a label cannot tell which night's image it is for; "
            "add each night's labels with --run-id RUN")


@dataclass
class _Plan:
    run_id: str
    rows: pa.Table  # every matched row: COLUMNS, partition, stats_segment, label (new), previous
    conflicts: pa.Table  # rows whose earlier label differs
    base: int  # batches committed when the plan was made: this one takes the next place


def _plan(store: Store, run: RunManifest, labels: pa.Table) -> _Plan:
    """The file's rows matched to the run's predictions, each with the label it had before."""
    ids, batches = labels["image_id"], committed(store, run.run_id)
    parts = [match_partition(store, run.run_id, p["partition"], ids) for p in run.partitions]
    matched = pa.concat_tables(parts) if parts else None
    if matched is None or not matched.num_rows:
        empty = LABEL_SCHEMA.empty_table()
        return _Plan(run.run_id, empty, empty, len(batches))
    earlier = known_labels(store, run.run_id, matched["image_id"], batches)
    previous = _previous(matched, earlier)
    order = pc.index_in(matched["image_id"], value_set=ids)
    rows = matched.drop_columns(["label"]).append_column("label", pc.take(labels["label"], order)) \
        .append_column("previous", previous)
    for c in ("labelled_at", "source"):
        rows = rows.append_column(c, pc.take(labels[c], order))
    rows = rows.sort_by("image_id")
    differs = pc.fill_null(pc.not_equal(rows["label"], rows["previous"]), False)
    return _Plan(run.run_id, rows, rows.filter(differs), len(batches))


def _previous(matched: pa.Table, earlier: dict[str, int]) -> pa.Array:
    """Each matched row's label before this batch: the latest batch's, else the one scored with it."""
    ingest = matched["label"].to_pylist()
    ids = matched["image_id"].to_pylist()
    return pa.array([earlier.get(i, v) for i, v in zip(ids, ingest, strict=True)], pa.int16())


def _commit(store: Store, plan: _Plan, file: str, sampling: str, replace: bool, k: int) -> AddedLabels:
    rows = plan.rows
    if not rows.num_rows:
        return AddedLabels(plan.run_id, None, 0, 0, 0, 0)
    batch_id = batch_digest(rows, sampling)
    changed = rows.filter(pc.fill_null(pc.not_equal(rows["label"], rows["previous"]), True))
    replaced = changed.num_rows - changed["previous"].null_count
    counts = {"rows": rows.num_rows, "new": changed.num_rows - replaced, "replaced": replaced,
              "unchanged": rows.num_rows - changed.num_rows}
    done = next((b for b in committed(store, plan.run_id) if b.batch_id == batch_id), None)
    if done or not changed.num_rows:  # a rerun, or labels already known: nothing to write
        return AddedLabels(plan.run_id, done, **counts, already_added=done is not None)
    store.write_parquet(layout.label_rows(plan.run_id, batch_id), changed.select(LABEL_SCHEMA.names).cast(LABEL_SCHEMA))
    sequence = plan.base
    record = LabelBatch.written({
        "batch_id": batch_id, "run_id": plan.run_id, "sequence": sequence, "file": file, "sampling": sampling,
        "replace": replace, **counts, "delta": delta_dict(delta(changed, k)),
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds")})
    # last, and exclusive: the batch counts from here, in this place of the run's order
    if not store.create_or_same(layout.label_commit(plan.run_id, sequence), _json(record.to_dict())):
        raise BatchmlError(f"another `labels add` committed a batch to run {plan.run_id} meanwhile: run this one "
                           "again (it is checked against that batch, and nothing of it counts yet)")
    return AddedLabels(plan.run_id, record, **counts)


def batch_digest(rows: pa.Table, sampling: str) -> str:
    """A digest of the rows (sorted by image_id) and how they were drawn: the batch id."""
    h = hashlib.sha256(sampling.encode())
    for c in ("image_id", "label", "labelled_at", "source"):
        h.update(json.dumps(rows[c].to_pylist()).encode())
    return h.hexdigest()[:24]


def _json(obj: dict) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"


def _conflict_problem(run_id: str, conflicts: pa.Table, classes: list[str]) -> str:
    shown = ", ".join(f"{i!r} {classes[p]} -> {classes[n]}" for i, p, n in zip(
        conflicts["image_id"][:SHOWN].to_pylist(), conflicts["previous"][:SHOWN].to_pylist(),
        conflicts["label"][:SHOWN].to_pylist(), strict=True))
    return (f"{conflicts.num_rows} image(s) of run {run_id} already have another label ({shown}"
            f"{', ...' if conflicts.num_rows > SHOWN else ''}): pass --replace if the new labels are right")


# -- reading back -----------------------------------------------------------------------------------


def committed(store: Store, run_id: str) -> list[LabelBatch]:
    """The run's committed batches, in commit order; a torn record is a ``DamagedFileError`` naming it."""
    names = [n for n in store.list(layout.run_labels(run_id), ".json") if layout.LABEL_COMMIT.match(n)]
    return [read_batch(store, f"{layout.run_labels(run_id)}/{n}") for n in names]


# a torn batch record or rows file: its labels file is the only copy of what it held
BATCH_FIX = ("move it away, then add that batch's labels file again (`batchml labels add FILE --run-id RUN`): "
             "the later batches were checked against it, so add theirs again too")


def read_batch(store: Store, rel: str) -> LabelBatch:
    """A batch record (``commit-N.json``), or ``DamagedFileError`` naming it and its repair."""
    try:
        data = read_json(store, rel)
    except DamagedFileError as exc:
        raise DamagedFileError(exc.url, exc.problem, BATCH_FIX) from None
    batch = LabelBatch.from_dict(data) if isinstance(data, dict) else None
    if batch is None or not isinstance(batch.delta, dict) or not isinstance(batch.batch_id, str):
        raise DamagedFileError(store.url(rel), "not a label batch record", BATCH_FIX)
    return batch


def known_labels(store: Store, run_id: str, ids: pa.Array | pa.ChunkedArray,
                 batches: list[LabelBatch] | None = None) -> dict[str, int]:
    """image_id -> the label the latest committed batch gave it, for ``ids`` the batches labelled."""
    out: dict[str, int] = {}
    for batch in committed(store, run_id) if batches is None else batches:
        rows = read_parquet(store, layout.label_rows(run_id, batch.batch_id), ["image_id", "label"], BATCH_FIX)
        rows = rows.filter(pc.is_in(rows["image_id"], value_set=ids))
        out.update(zip(rows["image_id"].to_pylist(), rows["label"].to_pylist(), strict=True))
    return out


def late_delta(store: Store, run_id: str, k: int, batches: list[LabelBatch] | None = None) -> PartitionStats:
    """The committed batches' deltas summed: what late labels add to the run's statistics."""
    out = PartitionStats(k)
    for batch in committed(store, run_id) if batches is None else batches:
        out = out + delta_stats(batch.delta, k)
    return out


@dataclass(frozen=True)
class LabelSources:
    """Where a run's labels came from: what monitoring needs to read them (``labels.realized``)."""

    batches: int = 0  # late batches committed
    sampling: tuple[str, ...] = ()  # ingest (labels scored with the run), and each batch's sampling


def label_sources(run: RunManifest, batches: list[LabelBatch]) -> LabelSources:
    ingest = ("ingest",) if run.labelled else ()
    return LabelSources(len(batches), ingest + tuple(sorted({b.sampling for b in batches})))


# -- which runs -------------------------------------------------------------------------------------


def _committed(store: Store, run_ids: list[str]) -> list[str]:
    for r in run_ids:
        if not store.exists(layout.run_path(r, layout.RUN_MANIFEST)):
            raise BatchmlError(f"run {r!r} in {store.url()} is not a committed run: labels go to scored runs "
                               "(`batchml score` commits a run; list them under runs/)")
    return run_ids


def runs_between(store: Store, since: str | None, until: str | None) -> list[RunManifest]:
    """The committed runs whose commit day is in [since, until] (ISO dates; open where None)."""
    runs = []
    for name in store.list(layout.RUNS):
        if layout.NAME_PATTERN.match(name) and store.exists(layout.run_path(name, layout.RUN_MANIFEST)):
            run = RunManifest.read(store, name)
            if (since or "") <= run.committed_at[:10] <= (until or "9999"):
                runs.append(run)
    if not runs:
        raise BatchmlError(f"no committed run between {since or 'the start'} and {until or 'now'}: "
                           "check the dates, or pass --run-id")
    return runs


def _one_class_list(runs: list[RunManifest]) -> list[str]:
    classes = list(runs[0].classes)
    if others := [r.run_id for r in runs if list(r.classes) != classes]:
        raise BatchmlError(f"runs {runs[0].run_id} and {', '.join(others[:SHOWN])} predict different classes: "
                           "add the labels to each run with --run-id")
    return classes

