"""A run's record and the checks of a rerun against it, on the client: ``run.json`` created
(exclusively) or checked (the same input, cut and model), the input against the files the run
pinned (a grown prefix refused, or its new files appended with ``--append``), and the two kinds
of message a run prints (``say``: silenced by ``-q``; ``notice``: never).
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from batchml import layout
from batchml.data import inputs
from batchml.errors import BatchmlError
from batchml.integrity import read_json
from batchml.records import SCORING_NEEDS, RunStart
from batchml.registry import ModelVersion, check_loadable, not_loadable, read_card, resolve
from batchml.store import Store, StoreConfig, options_for

if TYPE_CHECKING:
    from batchml.score.run import ScoreConfig


def say(verbose, *lines: str) -> None:
    """What was done: silenced by ``-q``."""
    if verbose:
        for line in lines:
            print(line, flush=True)


def notice(*lines: str) -> None:
    """What was left out of the run or read otherwise than asked, on stderr: never silenced (no silent
    skips)."""
    for line in lines:
        print(line, file=sys.stderr, flush=True)


def _check_warmed(mv: ModelVersion, futures: list) -> None:
    """The model loaded on a worker, or the error that says why it cannot be scored with."""
    for future in futures[:1]:
        try:
            future.result()
        except BatchmlError:
            raise
        except Exception as exc:
            raise not_loadable(mv, exc) from None


def start_run(store: Store, cfg: ScoreConfig, run_id: str, plan: inputs.InputPlan, verbose: bool,
               warming: tuple[ModelVersion, list] | None = None) -> RunStart:
    """Create run.json (create-exclusive: of two jobs starting one id, one writes it and the other
    checks against it), or check that an existing run is rerun with its dataset, cut and model."""
    rel = layout.run_path(run_id, layout.RUN_SPEC)
    mv = resolve(store, cfg.model)
    if not store.exists(rel):
        # before run.json ties the id to this model: its card must be whole, its classes the input's,
        # and the model loadable (a Lambda layer, refused by safe mode, would fail every partition)
        _check_classes(plan, read_card(store, mv, SCORING_NEEDS).classes, mv)
        _check_segment_column(store, cfg, plan)
        if warming and warming[0] == mv and warming[1]:
            _check_warmed(mv, warming[1])
        else:
            check_loadable(store, mv)
        run = RunStart.written({
            "run_id": run_id,
            "dataset": plan.name,
            "input": "images" if plan.images else "dataset",
            "dataset_fingerprint": plan.fingerprint,
            "partition_size": plan.partition_size,
            "model_version": str(mv),
            "model_ref": cfg.model,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "segment_by": cfg.segment_by,
            "segment_from_path": cfg.segment_from_path,
            "raw_orientation": cfg.raw_orientation,
            # a prefix's partitions, each file with its size: a rerun names what changed, --append adds to it
            **({INPUTS: {n: [[f, plan.sizes[f]] for f in files] for n, files in plan.partitions.items()}}
               if plan.images else {}),
        })
        if store.create(rel, json.dumps(run.to_dict(), indent=1, sort_keys=True).encode() + b"\n"):
            return run
    run = _read_run(store, run_id)
    _check_same_run(run.dataset, plan.name, run_id)
    was = run.partition_size
    if plan.images and was != plan.partition_size:  # other cuts would skip or repeat files
        how = f"resume it with --partition-size {was}" if was else "score the files under a new --run-id"
        raise BatchmlError(f"run {run_id!r} cut {plan.name} into partitions of {was or 'another number of'} "
                           f"files, not {plan.partition_size}: {how}, or score them under a new --run-id")
    if run.model_version != str(mv):
        if cfg.model != run.model_ref:  # asked for another model, not an alias that moved
            raise BatchmlError(f"run {run_id!r} scores with model {run.model_version} "
                               f"(--model {run.model_ref}), not {mv} (--model {cfg.model}): rerun it with "
                               f"--model {run.model_ref}, or score with {mv} under a new --run-id")
        say(verbose, f"score: run {run_id} keeps {run.model_version}, the model it started with "
             f"({cfg.model!r} is now {mv})")
    return run


def as_pinned(cfg: ScoreConfig, run: RunStart) -> ScoreConfig:
    """``cfg`` with the segmenting and orientation the run pinned: a rerun that leaves them out (a
    resume, ``--append``, ``doctor --repair``) scores the same way, one that asks otherwise is refused
    (its partitions would not fold with the run's)."""
    if run.raw_orientation is None:  # started before they were pinned
        return cfg
    pinned = {"segment_by": run.segment_by, "segment_from_path": run.segment_from_path}
    asked = {k: getattr(cfg, k) for k in pinned if getattr(cfg, k)}
    if asked and asked != {k: v for k, v in pinned.items() if v}:
        was = " ".join(f"--{k.replace('_', '-')} {v!r}" for k, v in pinned.items() if v) or "none (no --segment-by)"
        raise BatchmlError(f"run {run.run_id!r} segments by {was}: rerun it so (or leave the option out), "
                           "or score with the new segmenting under a new --run-id")
    if cfg.raw_orientation and not run.raw_orientation:
        raise BatchmlError(f"run {run.run_id!r} applies EXIF orientation: rerun it without --raw-orientation, "
                           "or score the raw pixels under a new --run-id")
    return replace(cfg, **pinned, raw_orientation=run.raw_orientation)


INPUTS = "inputs"  # run.json and append records: partition -> [[file, size], ...] of a prefix


def _read_run(store: Store, run_id: str) -> RunStart:
    return RunStart.from_dict(read_json(store, layout.run_path(run_id, layout.RUN_SPEC)))


def check_input(store: Store, cfg: ScoreConfig, run: RunStart, plan: inputs.InputPlan, verbose: bool) -> dict:
    """The run's partitions (name -> a prefix's files, or None for a dataset's), the input checked
    against what the run pinned; with ``cfg.append``, a grown prefix's new files added to them."""
    run_id = run.run_id
    if not plan.images:
        if cfg.append:
            raise BatchmlError("--append adds files to an --images run: a dataset is scored whole; "
                               "ingest the new images as another dataset and score it under a new --run-id")
        if run.dataset_fingerprint != plan.fingerprint:
            raise BatchmlError(f"the input {plan.name!r} changed since run {run_id!r} started: finish it with the "
                               "original images or start a new --run-id")
        return dict(plan.partitions)
    if INPUTS not in run.extra:  # a run started before the listing was kept: the fingerprint alone
        if run.dataset_fingerprint != plan.fingerprint:
            raise BatchmlError(f"the input {plan.name!r} changed since run {run_id!r} started: finish it with the "
                               "original images or start a new --run-id")
        return dict(plan.partitions)
    pinned = _pinned(store, run)
    sizes = {f: size for files in pinned.values() for f, size in files}
    change = inputs.listing_change(sizes, plan.sizes)
    partitions = {n: tuple(f for f, _ in files) for n, files in pinned.items()}
    if not change:
        return partitions
    done = set(store.list(layout.run_path(run_id, "stats"), ".json"))
    unscored = {f for n, files in partitions.items() if layout.stats_name(n) not in done for f in files}
    if stuck := [f for f in change.missing + change.changed if f in unscored]:
        raise BatchmlError(
            f"the input {plan.name!r} changed since run {run_id!r} started: {change.describe()}; "
            f"{len(stuck)} of them ({inputs.some(stuck)}) are in partitions not scored yet, which cannot be scored "
            "as the run listed them: put those files back as they were and rerun, or score the prefix under a "
            "new --run-id")
    if not cfg.append and not change.new:
        raise BatchmlError(
            f"the input {plan.name!r} changed since run {run_id!r} started: {change.describe()}. The run keeps "
            "its rows of those files as it scored them; to score the files as they are now, score the prefix "
            "under a new --run-id")
    if not cfg.append:
        raise BatchmlError(
            f"the input {plan.name!r} changed since run {run_id!r} started: {change.describe()}. Score only the "
            f"new files into this run with `batchml score --images {plan.name} --run-id {run_id} --append` "
            f"(then `batchml monitor --run-id {run_id}`), or score the prefix under a new --run-id")
    if change.missing or change.changed:
        notice(f"score: --append scores the new files only; the rows of files since {change.describe()} stay "
                "as scored")
    if not change.new:
        return partitions
    added = inputs.cut(change.new, run.partition_size, first=len(partitions))
    record = {"appended_at": datetime.now(UTC).isoformat(timespec="seconds"),
              INPUTS: {n: [[f, plan.sizes[f]] for f in files] for n, files in added.items()}}
    number = len(store.list(layout.run_appends(run_id), ".json"))
    if not store.create(layout.run_append(run_id, number), json.dumps(record, indent=1).encode() + b"\n"):
        raise BatchmlError(f"another job appended to run {run_id!r} at the same moment: rerun this command "
                           "(it then appends what that job did not)")
    say(verbose, f"score: appending {len(change.new)} new file(s) to run {run_id} as partitions "
         f"{next(iter(added))} to {next(reversed(added))}")
    return {**partitions, **added}


def pinned_plan(store: Store, run: RunStart) -> inputs.InputPlan:
    """A prefix's plan as the run pinned it (run.json's listing and its appends'), not listed again:
    what a repair scores or commits from, whether or not the prefix is still there."""
    pinned = _pinned(store, run)
    return inputs.InputPlan(run.dataset, run.dataset_fingerprint, None,
                            {n: tuple(f for f, _ in files) for n, files in pinned.items()},
                            Store(StoreConfig(run.dataset.rstrip("/"), options_for(run.dataset, store))).config,
                            run.partition_size, {f: size for files in pinned.values() for f, size in files})


def _pinned(store: Store, run: RunStart) -> dict[str, list]:
    """The partitions a prefix run holds: run.json's, then each append's, in order."""
    pinned = dict(run.extra[INPUTS])
    for name in store.list(layout.run_appends(run.run_id), ".json"):
        pinned.update(read_json(store, f"{layout.run_appends(run.run_id)}/{name}")[INPUTS])
    return pinned


def _check_classes(plan: inputs.InputPlan, classes: list[str], mv: ModelVersion) -> None:
    if plan.classes and plan.classes != classes:
        raise BatchmlError(
            f"dataset {plan.name!r} labels classes {plan.classes} but model {mv} predicts "
            f"{classes}: score with a model trained on these classes"
        )


def _check_segment_column(store: Store, cfg: ScoreConfig, plan: inputs.InputPlan) -> None:
    """``--segment-by``'s column is in the input, checked before run.json pins it (a typo pinned would
    refuse every rerun of the run id)."""
    if not cfg.segment_by:
        return
    if plan.images:
        raise BatchmlError(f"--segment-by {cfg.segment_by!r}: a prefix of files carries no columns; segment "
                           "it by a part of the path with --segment-from-path, e.g. '{camera}/**'")
    first = next(iter(plan.partitions))
    try:
        columns = pq.read_schema(io.BytesIO(store.read_bytes(layout.dataset_path(plan.name, first)))).names
    except (pa.ArrowException, OSError):  # a damaged partition: its task names it and the fix
        return
    if cfg.segment_by not in columns:
        carried = [c for c in columns if c not in ("image", "image_id", "label")]
        raise BatchmlError(f"dataset {plan.name!r} has no column {cfg.segment_by!r} to segment by (its carried "
                           f"columns: {', '.join(carried) or 'none'}): pass one of them to --segment-by")


def _check_same_run(scored: str, dataset: str, run_id: str) -> None:
    if scored != dataset:
        raise BatchmlError(
            f"run {run_id!r} scores dataset {scored!r}, not {dataset!r}: "
            "choose another --run-id"
        )
