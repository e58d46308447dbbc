"""``batchml doctor``: check a store, name each damaged file, what depends on it and the command
that repairs it (``--repair``: ``batchml.repair``).

What is checked: every run's ``run.json``, manifest, and per partition its statistics against
its predictions and error rows (row counts must agree: a partition whose statistics count rows
its predictions lack has lost rows); the monitoring tables, one file per run; the accepted
baselines; each model version's card and file, and each model's aliases; each dataset's
manifest and partitions. A run that is merely unfinished is not damage: it is listed with the
command that finishes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow.parquet as pq

from batchml import layout
from batchml.data import datasets
from batchml.errors import BatchmlError
from batchml.integrity import DamagedFileError, manifest_problem, read_json, read_stats
from batchml.records import SCORING_NEEDS, AcceptedBaseline, DatasetManifest, ModelCard, RunManifest
from batchml.registry import list_models, read_aliases
from batchml.stats import PartitionStats
from batchml.store import Store

# what --repair does about a finding: move it aside and score its run again, move it aside and
# commit the run again, move it aside and monitor the run again, move it aside alone, or nothing
RESCORE, RECOMMIT, REMONITOR, SET_ASIDE, BY_HAND = "rescore", "recommit", "remonitor", "set aside", "by hand"


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the store root
    problem: str
    needed_by: str  # what depends on the file
    fix: str  # the command (or the step) that repairs it
    action: str = BY_HAND  # what --repair does (above)
    run_id: str | None = None  # the run to score or monitor again
    also: tuple[str, ...] = ()  # files that must move with it (a partition's statistics mark it done)

    def describe(self, store: Store) -> str:
        return (f"DAMAGED {store.url(self.path)}: {self.problem}\n  needed by: {self.needed_by}\n"
                f"  repair: {self.fix}")


@dataclass
class Checkup:
    findings: list[Finding] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # runs started and never committed
    checked: int = 0  # files looked at

    @property
    def whole(self) -> bool:
        return not self.findings

    def absorb(self, other: Checkup) -> None:
        self.findings += other.findings
        self.unfinished += other.unfinished
        self.checked += other.checked


CHECK_THREADS = 8  # runs, and partitions of a run, checked at once: on S3 each file is a round trip


def _each(items: list, check: Callable[[Any, Checkup], None]) -> Checkup:
    """``check(item, its checkup)`` for every item, ``CHECK_THREADS`` at once; the findings in the items' order."""
    parts = [Checkup() for _ in items]
    with ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="batchml-doctor") as pool:
        list(pool.map(check, items, parts))
    merged = Checkup()
    for part in parts:
        merged.absorb(part)
    return merged


def check_store(store: Store) -> Checkup:
    """Every damaged file of the store, with what depends on it and its repair."""
    out = _each(store.list(layout.RUNS), lambda run_id, part: _check_run(store, run_id, part))
    _check_monitoring(store, out)
    _check_accepted(store, out)
    _check_models(store, out)
    _check_datasets(store, out)
    return out


# -- runs ------------------------------------------------------------------------------------------


def _check_run(store: Store, run_id: str, out: Checkup) -> None:
    spec_rel, manifest_rel = layout.run_path(run_id, layout.RUN_SPEC), layout.run_path(run_id, layout.RUN_MANIFEST)
    spec = _json(store, spec_rel, out)
    committed = store.exists(manifest_rel)
    manifest = _manifest(store, run_id, out) if committed else None
    if isinstance(spec, Finding):
        if not committed and not store.exists(spec_rel):
            return  # a folder without a run: nothing depends on it
        fix = ("batchml doctor --repair (rebuilds it from the manifest)" if manifest
               else f"score the input again under a new --run-id; run {run_id} cannot be resumed")
        out.findings.append(_found(spec, f"resuming or appending to run {run_id}", fix,
                                   RECOMMIT if manifest else SET_ASIDE, run_id))
    for name in store.list(layout.run_appends(run_id), ".json"):  # the listings --append added
        if isinstance(record := _json(store, f"{layout.run_appends(run_id)}/{name}", out), Finding):
            out.findings.append(_found(record, f"resuming or appending to run {run_id}",
                                       "batchml doctor --repair (rebuilds it from the run's predictions)",
                                       RECOMMIT, run_id))
    if not committed and store.exists(layout.monitoring_path("runs", run_id)):
        out.findings.append(Finding(  # monitored, so committed once: its manifest went missing
            manifest_rel, "missing, though the run was committed and monitored",
            f"every reader of run {run_id} (report, dashboard, monitor ranges)",
            "batchml doctor --repair (commits the run again from its statistics)", RECOMMIT, run_id))
    elif not committed:
        out.unfinished.append(run_id)
    if committed and manifest is None:  # damaged manifest: the run's statistics are committed again
        return
    partitions = [p["partition"] for p in manifest.partitions] if manifest else [
        n.removesuffix(".json") + ".parquet" for n in store.list(layout.run_path(run_id, "stats"), ".json")]
    out.absorb(_each(partitions, lambda partition, part: _check_partition(store, run_id, partition, committed, part)))
    _check_label_batches(store, run_id, out)


def _manifest(store: Store, run_id: str, out: Checkup) -> RunManifest | None:
    rel = layout.run_path(run_id, layout.RUN_MANIFEST)
    data = _json(store, rel, out)
    problem = data.problem if isinstance(data, Finding) else manifest_problem(data)
    if not problem:
        return RunManifest.from_dict(data)
    out.findings.append(Finding(rel, problem, f"run {run_id}: monitoring it, the dashboard, every reader of its "
                                "rows (readers trust committed runs only)",
                                "batchml doctor --repair (commits the run again from its statistics)",
                                RECOMMIT, run_id))
    return None


def _check_partition(store: Store, run_id: str, partition: str, committed: bool, out: Checkup) -> None:
    stats_rel = layout.run_stats(run_id, partition)
    needed = f"run {run_id}: {'monitoring it and the dashboard' if committed else 'committing it'}"
    if committed:
        fix = f"batchml doctor --repair (scores partition {partition} of run {run_id} again; no row is duplicated)"
    else:  # the job that started it finishes it: repair only moves the file aside
        fix = f"batchml doctor --repair moves it aside; then resume: batchml score ... --run-id {run_id}"
    action = RESCORE if committed else SET_ASIDE
    out.checked += 1
    try:
        record = read_stats(store, run_id, partition)
    except DamagedFileError as exc:
        out.findings.append(Finding(stats_rel, exc.problem, needed, fix, action, run_id))
        return
    for kind, expected in (("predictions", record.rows), ("errors", record.errors)):
        rel = layout.run_output(run_id, kind, partition)
        if kind == "errors" and not expected:
            continue
        if problem := _parquet_problem(store, rel, expected):
            out.findings.append(Finding(rel, problem, f"run {run_id}: its {kind} rows ({expected} in partition "
                                        f"{partition}, counted by {stats_rel})", fix, action, run_id, (stats_rel,)))
    # a partition scored with input health wrote its hashes (even for no rows): missing, they were lost
    hashed = PartitionStats.from_dict(record.stats).has("health_hist")
    for rel, what, required in ((layout.run_output(run_id, "failures", partition), "its failure-case snapshot", False),
                                (layout.run_hashes(run_id, partition), "its duplicates (and later nights')", hashed)):
        if (required or store.exists(rel)) and (problem := _parquet_problem(store, rel, None)):
            out.findings.append(Finding(rel, problem, f"run {run_id}: {what}", fix, action, run_id, (stats_rel,)))


def _check_label_batches(store: Store, run_id: str, out: Checkup) -> None:
    from batchml.labels.batches import BATCH_FIX, read_batch

    folder = layout.run_labels(run_id)
    for name in store.list(folder, ".json"):
        if not layout.LABEL_COMMIT.match(name):
            continue
        rel, needed = f"{folder}/{name}", f"run {run_id}: its late labels (monitoring it, `batchml labels add`)"
        out.checked += 1
        try:
            batch = read_batch(store, rel)
        except DamagedFileError as exc:
            out.findings.append(Finding(rel, exc.problem, needed, BATCH_FIX, run_id=run_id))
            continue
        rows = layout.label_rows(run_id, batch.batch_id)
        if problem := _parquet_problem(store, rows, None):
            out.findings.append(Finding(rows, problem, needed, BATCH_FIX, run_id=run_id))


def _parquet_problem(store: Store, rel: str, rows: int | None) -> str:
    """"" when ``rel`` is a readable Parquet file of ``rows`` rows (any number where None)."""
    try:
        with store.fs.open(store.path(rel), "rb") as f:
            found = pq.read_metadata(f).num_rows
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # torn, not Parquet: pyarrow raises several kinds
        return f"not readable as Parquet ({type(exc).__name__}: {exc})"
    return f"it holds {found} rows where {rows} were written" if rows is not None and found != rows else ""


# -- monitoring ------------------------------------------------------------------------------------


def _check_monitoring(store: Store, out: Checkup) -> None:
    committed = set(store.list(layout.RUNS))
    for table in ("runs", "alerts", "failures", "segments"):
        for name in store.list(layout.monitoring_folder(table), ".parquet"):
            rel = layout.monitoring_file(table, name)
            out.checked += 1
            if problem := _parquet_problem(store, rel, None):
                run_id = name.removesuffix(".parquet")
                can = run_id in committed and store.exists(layout.run_path(run_id, layout.RUN_MANIFEST))
                out.findings.append(Finding(
                    rel, problem, f"the {table} table: the dashboard, range summaries and later nights' baselines "
                    "(readers skip it with a warning meanwhile)",
                    f"batchml doctor --repair (then monitors run {run_id} again)" if can
                    else "batchml doctor --repair (moves it aside; its run is gone)",
                    REMONITOR if can else SET_ASIDE, run_id if can else None))


def _check_accepted(store: Store, out: Checkup) -> None:
    for name in store.list(layout.accepted_folder(), ".json"):
        rel = layout.accepted_file(name)
        data = _json(store, rel, out)
        problem = data.problem if isinstance(data, Finding) else _accepted_problem(data)
        if problem:
            run_id = name.removesuffix(".json")
            out.findings.append(Finding(
                rel, problem, "the accepted baseline of its model: sustained-shift alerts and COT compare with it "
                "(readers skip it meanwhile, falling back to an older acceptance or the reference)",
                f"batchml doctor --repair moves it aside; then accept again: batchml monitor --accept-baseline "
                f"{run_id} --note WHY", SET_ASIDE))


def _accepted_problem(data) -> str:
    """What makes an accepted record unreadable to monitoring ("" when it is whole)."""
    try:
        record = AcceptedBaseline.from_dict(data)
        datetime.fromisoformat(record.accepted_at)
    except (ValueError, TypeError, AttributeError) as exc:
        return f"not an accepted-baseline record ({type(exc).__name__}: {exc})"
    lacking = [k for k in ("run_id", "model_version", "committed_at", "predicted_counts") if not getattr(record, k)]
    return f"it lacks {', '.join(lacking)}" if lacking else ""


# -- models and datasets ---------------------------------------------------------------------------


def _check_models(store: Store, out: Checkup) -> None:
    for name in list_models(store):
        try:
            read_aliases(store, name)
        except BatchmlError as exc:
            out.findings.append(Finding(layout.aliases_path(name), str(exc).split(". Point")[0],
                                        f"every job that names model {name} by an alias (production...)",
                                        f"batchml models promote {name}/vN --alias ALIAS, for each alias"))
        for version in store.list(layout.model_prefix(name)):
            if layout.is_version(version):
                _check_version(store, layout.ModelVersion(name, version), out)


def _check_version(store: Store, mv: layout.ModelVersion, out: Checkup) -> None:
    if not store.exists(mv.card_path):
        return  # claimed, never committed (a registration that died): not a version
    out.checked += 1
    fix = f"restore it from a copy, or retrain and promote a new version of {mv.name}"
    data = _json(store, mv.card_path, out)
    problem = data.problem if isinstance(data, Finding) else ""
    if not problem:
        try:
            ModelCard.checked(data, store.url(mv.card_path), SCORING_NEEDS)
        except BatchmlError as exc:
            problem = str(exc).removeprefix(store.url(mv.card_path)).split(": the card")[0].strip()
    if problem:
        out.findings.append(Finding(mv.card_path, problem, f"scoring and monitoring with {mv}; models list", fix))
    elif problem := _novelty_problem(store, mv, data.get("novelty")):
        out.findings.append(Finding(mv.novelty_path, problem, f"scoring with {mv} (novel-image scores)",
                                    f"{fix}; or delete 'novelty' from its card (scored without novelty)"))
    if not store.exists(mv.model_path):
        out.findings.append(Finding(mv.model_path, "missing", f"scoring with {mv}", fix))


def _novelty_problem(store: Store, mv: layout.ModelVersion, entry) -> str:
    """What keeps the card's novelty reference from loading ("" when it loads, or the card has none)."""
    from batchml.train.novelty import read_novelty

    try:
        read_novelty(store, mv, entry if isinstance(entry, dict) else None)
    except BatchmlError as exc:
        return f"not readable as a novelty reference ({exc.__cause__!r})"
    return ""


def _check_datasets(store: Store, out: Checkup) -> None:
    for dataset in datasets.list_datasets(store):
        rel = layout.dataset_path(dataset, layout.DATASET_MANIFEST)
        data = _json(store, rel, out)
        needed = f"scoring and training with dataset {dataset}"
        fix = f"ingest it again from its source: batchml ingest SOURCE --dataset {dataset}"
        if isinstance(data, Finding):
            out.findings.append(_found(data, needed, fix, BY_HAND, None))
            continue
        try:
            manifest = DatasetManifest.from_dict(data)
        except TypeError as exc:
            out.findings.append(Finding(rel, f"not a dataset manifest ({exc})", needed, fix))
            continue
        for part in manifest.partitions or []:
            out.checked += 1
            part_rel = layout.dataset_path(dataset, part["name"])
            if problem := _parquet_problem(store, part_rel, part.get("rows")):
                out.findings.append(Finding(part_rel, problem, needed, fix))


# -- helpers ---------------------------------------------------------------------------------------


def _json(store: Store, rel: str, out: Checkup):
    """The parsed file, or a Finding holding its problem (the caller says what depends on it)."""
    out.checked += 1
    try:
        return read_json(store, rel)
    except DamagedFileError as exc:
        return Finding(rel, exc.problem, "", "")


def _found(f: Finding, needed: str, fix: str, action: str, run_id: str | None) -> Finding:
    return Finding(f.path, f.problem, needed, fix, action, run_id)


def lines(store: Store, checkup: Checkup) -> Iterator[str]:
    """The checkup as the CLI prints it."""
    for f in checkup.findings:
        yield f.describe(store)
    for run_id in checkup.unfinished:
        yield (f"unfinished run {run_id} (started, never committed): finish it with the same `batchml score "
               f"... --run-id {run_id}` it started with")
    yield (f"doctor: {store.url()}: {checkup.checked} files checked; "
           + (f"{len(checkup.findings)} damaged" if checkup.findings else "the store is whole"))
