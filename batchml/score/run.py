"""A scoring run on the client: its start (its record and the checks of a rerun:
``batchml.score.resume``), one Dask task per partition to score (``batchml.score.partition``),
and its commit.

The run commit protocol (paths: ``batchml.layout``):
- ``runs/<id>/run.json`` pins what the run scores: dataset, its fingerprint, model version;
- per partition, under deterministic names: ``predictions/part-N.parquet``, then
  ``failures/part-N.parquet`` (failure-case candidates) and ``errors/part-N.parquet``
  (undecodable images) when there are any, then ``stats/part-N.json`` last, which marks
  the partition done;
- ``runs/<id>/manifest.json`` last of all: the run is committed.
A rerun of a run id skips partitions whose statistics exist, so a killed worker or a
killed job never duplicates a row. A committed run is written again only to add files
(``--append``: ``appends/append-N.json`` pins them first, create-exclusive) or to score
again a partition whose statistics went missing; then its manifest is replaced whole.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from batchml import layout
from batchml.data import datasets, inputs
from batchml.data.images import Preprocessing
from batchml.errors import BatchmlError
from batchml.integrity import read_json, read_stats
from batchml.progress import Progress
from batchml.records import SCORING_NEEDS, RunManifest, RunStart
from batchml.registry import DEFAULT_ALIAS, ModelVersion, read_card, resolve
from batchml.score.partition import RunSpec, score_partition, warm_model
from batchml.score.resume import INPUTS, as_pinned, check_input, notice, say, start_run
from batchml.score.segments import segmenting
from batchml.stats import BiasCorrection
from batchml.store import Store, options_for
from batchml.train.novelty import read_novelty


@dataclass(frozen=True)
class ScoreConfig:
    dataset: str | None  # an ingested dataset; or None with ``images``
    model: str = DEFAULT_ALIAS  # [NAME/]VERSION_OR_ALIAS
    run_id: str | None = None  # default: <dataset>-<UTC time>
    batch_size: int | None = None  # images per predict call; None: the device's (GPU: largest that fits)
    max_error_ratio: float = 0.01  # undecodable images above this share fail the run
    images: str | None = None  # instead of a dataset: a prefix of raw JPEG/PNG files (folder or s3://)
    partition_size: int = datasets.DEFAULT_PARTITION_SIZE  # images per partition of such a prefix
    append: bool = False  # a committed --images run whose prefix grew: score the new files into it
    segment_by: str | None = None  # a carried column whose values segment the statistics
    segment_from_path: str | None = None  # with ``images``: the path part that does, e.g. '{camera}/**'
    raw_orientation: bool = False  # score the pixels as stored, without applying EXIF orientation
    # input health, hashes and novelty; off only to measure what they cost
    diagnostics: bool = True


def score(client, store: Store, cfg: ScoreConfig, verbose: bool = True,
          plan: inputs.InputPlan | None = None) -> RunManifest:
    """Score every partition of the input not yet done in this run, then commit the run
    (``plan``: the input as listed already; listed here by default).

    A committed run is checked against its input as an unfinished one is: a prefix that has
    grown since is refused with the difference, unless ``cfg.append`` scores the new files into
    the run (new partitions after its own). A committed run whose statistics went missing has
    those partitions scored again (the same names: no row is duplicated)."""
    check_config(cfg)
    run_id = cfg.run_id or f"{cfg.dataset or 'images'}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    warming = _warm_workers(client, store, cfg)  # the workers load the model while the client lists
    plan = plan or _plan(store, cfg)
    notice(*inputs.skipped_notices(plan))
    run, cfg, partitions, names, todo = _started(store, cfg, run_id, plan, verbose, warming)
    if (manifest := _already_committed(store, run_id, names, todo, verbose)) is not None:
        return manifest
    mv = ModelVersion.parse(run.model_version)
    card = read_card(store, mv, SCORING_NEEDS)
    if plan.images and (unknown := inputs.unknown_label_folders(plan, card.classes)):
        notice(f"score: folders {unknown[:5]} under {plan.name} are not classes of {mv} "
                f"({', '.join(card.classes)}): their images are scored unlabelled")
    novelty = card.novelty if cfg.diagnostics else None
    # a missing or damaged reference raises here, not on every worker; another method's reads as None
    if novelty and read_novelty(store, mv, novelty) is None:
        novelty = None
        notice(f"score: model {mv}'s novelty reference is of method {card.novelty.get('method')!r}, which this "
               "batchml does not know: scored without the novelty check (no images-unlike-training alerts "
               "for this run): upgrade batchml, or score with a version trained by this one")
    spec = RunSpec(
        store.config, run_id, plan.name, mv, tuple(card.classes),
        Preprocessing.from_dict(card.preprocessing), card.calibration.temperature,
        cfg.batch_size, plan.images, _bias_correction(card, mv),
        segmenting(cfg.segment_by, cfg.segment_from_path, bool(cfg.images)), cfg.raw_orientation,
        cfg.diagnostics, novelty,
    )
    started = time.perf_counter()
    _run_tasks(client, spec, {n: partitions[n] for n in todo}, len(names), verbose, plan.sizes)
    wall = time.perf_counter() - started
    return _commit(store, spec, run, names, todo, wall, cfg.max_error_ratio)


def committed_already(store: Store, cfg: ScoreConfig, verbose: bool = True) -> RunManifest | None:
    """The manifest of a committed run with nothing left to do, found without a cluster, so that a
    rerun of a finished night ends at once (and a rerun the run refuses, another input, cut or
    model, is refused before a cluster starts, as is a dataset or local folder that is not there).
    None where ``score`` has work or checks to do: a new or unfinished run, ``--append``,
    statistics gone missing, a run record to rebuild."""
    check_config(cfg)
    # a dataset's plan is one small file: an unknown dataset is named now
    plan = inputs.plan_dataset(store, cfg.dataset) if not cfg.images else None
    if cfg.images and "://" not in cfg.images and not Path(cfg.images).exists():
        inputs.plan_prefix(cfg.images, {}, cfg.partition_size)  # names the missing folder
    run_id = cfg.run_id
    if cfg.append or not run_id or not all(store.exists(layout.run_path(run_id, name))
                                           for name in (layout.RUN_SPEC, layout.RUN_MANIFEST)):
        return None
    plan = plan or _plan(store, cfg)
    _, _, _, names, todo = _started(store, cfg, run_id, plan, verbose=False)
    if todo:
        return None
    notice(*inputs.skipped_notices(plan))
    return _already_committed(store, run_id, names, [], verbose)


def score_unless_committed(open_client: Callable[[], AbstractContextManager], store: Store, cfg: ScoreConfig,
                           verbose: bool = True) -> RunManifest:
    """``score`` on a client from ``open_client``, opened only when ``committed_already`` finds work."""
    if (manifest := committed_already(store, cfg, verbose)) is not None:
        return manifest
    with _opened_meanwhile(open_client) as client:
        plan = _plan(store, cfg)  # while a cluster starts: a listing of a large prefix takes seconds too
        return score(client(), store, cfg, verbose=verbose, plan=plan)


@contextmanager
def _opened_meanwhile(open_client: Callable[[], AbstractContextManager]) -> Iterator[Callable[[], object]]:
    """``open_client()`` entered on a thread of its own (a local cluster takes seconds: worker
    processes, their imports); yields a call that waits for its client. Whatever happens in the
    block, what was opened is closed."""
    opening = open_client()
    with ThreadPoolExecutor(1, thread_name_prefix="batchml-connect") as pool:
        entered = pool.submit(opening.__enter__)
        try:
            yield entered.result
        except BaseException:
            if entered.exception() is None:  # waits for the start to end, then closes what it opened
                if not opening.__exit__(*sys.exc_info()):
                    raise
            else:
                raise
        else:
            opening.__exit__(None, None, None)


def _started(store: Store, cfg: ScoreConfig, run_id: str, plan: inputs.InputPlan, verbose: bool,
             warming: tuple[ModelVersion, list] | None = None) -> tuple:
    """(the run's record, ``cfg`` as the run pinned it, its partitions, their names, those not done yet),
    run.json written or checked against this rerun (``resume``)."""
    run = start_run(store, cfg, run_id, plan, verbose, warming)
    cfg = as_pinned(cfg, run)
    partitions = check_input(store, cfg, run, plan, verbose)
    names = list(partitions)
    done = set(store.list(layout.run_path(run_id, "stats"), ".json"))
    return run, cfg, partitions, names, [n for n in names if layout.stats_name(n) not in done]


def _plan(store: Store, cfg: ScoreConfig) -> inputs.InputPlan:
    return (inputs.plan_prefix(cfg.images, options_for(cfg.images, store), cfg.partition_size) if cfg.images
            else inputs.plan_dataset(store, cfg.dataset))


def _already_committed(store: Store, run_id: str, names: list[str], todo: list[str],
                       verbose: bool) -> RunManifest | None:
    """The committed manifest where it holds every partition and nothing is left to do; else None
    (and a committed run whose statistics went missing says so: they are scored again)."""
    if not store.exists(layout.run_path(run_id, layout.RUN_MANIFEST)):
        return None
    manifest = RunManifest.read(store, run_id)
    committed = [p["partition"] for p in manifest.partitions]
    if not todo and committed == names:
        say(verbose, f"score: run {run_id} is already committed; nothing to do")
        return manifest
    if lost := [n for n in todo if n in committed]:
        notice(f"score: run {run_id} is committed but the statistics of {len(lost)} partition(s) are missing "
                f"({', '.join(lost[:3])}): scoring them again")
    return None


def _bias_correction(card, mv: ModelVersion) -> BiasCorrection | None:
    """The card's BCTS for the monitoring cells, checked before any partition is scored."""
    try:
        bcts = BiasCorrection.from_dict(card.calibration.bcts)
    except (KeyError, TypeError, ValueError) as e:
        bcts, problem = None, f"is malformed ({e!r})"
    else:
        problem = (f"has {len(bcts.bias)} biases for {len(card.classes)} classes"
                   if bcts and len(bcts.bias) != len(card.classes) else "")
    if problem:
        raise BatchmlError(f"model {mv}: calibration.bcts in its card.json {problem}: retrain the model, or "
                           "delete calibration.bcts from the card (monitoring then estimates accuracy by ATC)")
    return bcts


def check_config(cfg: ScoreConfig) -> ScoreConfig:
    """Refuse settings that cannot work before anything is written."""
    if bool(cfg.dataset) == bool(cfg.images):
        raise BatchmlError("score needs either --dataset NAME or --images PREFIX")
    if cfg.partition_size < 1:
        raise BatchmlError(f"--partition-size must be at least 1 file, not {cfg.partition_size}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise BatchmlError(f"--batch-size must be at least 1 image, not {cfg.batch_size} (omit it for the device's)")
    if not 0 <= cfg.max_error_ratio <= 1:
        raise BatchmlError(f"--max-error-ratio is a share of the images, from 0 to 1, not {cfg.max_error_ratio}")
    segmenting(cfg.segment_by, cfg.segment_from_path, bool(cfg.images))
    if cfg.run_id:
        layout.check_new_name("run", cfg.run_id)
    return cfg


def _warm_workers(client, store: Store, cfg: ScoreConfig) -> tuple[ModelVersion, list] | None:
    """Each worker loads the model asked for, in the background: it is needed there anyway, and
    the load then overlaps the client's listing and checks instead of delaying the first partition.
    (A run that pins another version loads that one in its first task.)"""
    try:
        mv = resolve(store, cfg.model)
        card = read_card(store, mv, SCORING_NEEDS)
    except BatchmlError:
        return None  # named by the checks further on
    novelty = card.novelty if cfg.diagnostics else None
    spec = RunSpec(store.config, "warm", "", mv, tuple(card.classes), Preprocessing(), 1.0, None, novelty=novelty)
    workers = list(client.scheduler_info()["workers"])
    return mv, [client.submit(warm_model, spec, workers=[w], allow_other_workers=False, pure=False,
                              key=f"warm-{mv}-{uuid.uuid4().hex[:8]}") for w in workers]


def _run_tasks(client, spec: RunSpec, todo: dict[str, tuple | None], total: int, verbose: bool,
               sizes: dict[str, int | None]) -> None:
    from distributed import as_completed

    from batchml.cluster import SCORE_GPU_SHARE, gpu_resources

    progress = Progress(f"score {spec.run_id}", total=total, unit="partitions", enabled=verbose,
                        done=total - len(todo))
    if not todo:
        progress.close()
        return
    attempt = uuid.uuid4().hex[:8]  # task keys must not collide with a previous attempt's
    resources = gpu_resources(client, SCORE_GPU_SHARE)
    items = list(todo.items())
    # Dask hands queued tasks out in submission order: when a task ends, its worker is given the
    # one as many tasks further on as the cluster runs at once. That one is read ahead.
    ahead = max(1, sum(client.nthreads().values()))
    futures = [client.submit(score_partition, spec, name, files, items[i + ahead] if i + ahead < len(items) else None,
                             tuple(sizes.get(f) for f in files) if files is not None else None,
                             key=f"score-{spec.run_id}-{name}-{attempt}", resources=resources)
               for i, (name, files) in enumerate(items)]
    rows = 0
    try:
        for future in as_completed(futures):
            rows += future.result().rows
            progress.update(1, f"{rows:,} rows")
    except BaseException:
        client.cancel(futures)  # stop the rest: the run stays uncommitted, a rerun resumes it
        raise
    finally:
        progress.close()


def _commit(store: Store, spec: RunSpec, run: RunStart, names: list[str], todo: list[str],
            wall: float, max_error_ratio: float) -> RunManifest:
    parts = [read_stats(store, spec.run_id, n) for n in names]
    rows = sum(p.rows for p in parts)
    errors = sum(p.errors for p in parts)
    if errors > max_error_ratio * (rows + errors):
        raise BatchmlError(
            f"run {spec.run_id!r}: {errors} of {rows + errors} images could not be decoded "
            f"({errors / (rows + errors):.1%}, above --max-error-ratio {max_error_ratio:.1%}); "
            f"see {store.url(layout.run_path(spec.run_id, 'errors'))}. The run is not committed: fix the images, "
            "or rerun with the same --run-id and a higher --max-error-ratio."
        )
    scored_now = sum(p.rows + p.errors for p in parts if p.partition in todo)
    manifest = RunManifest.written({
        **{k: v for k, v in run.to_dict().items() if k != INPUTS},  # the listing stays in run.json
        "appended_partitions": len(names) - len(run.extra.get(INPUTS) or names),
        "classes": list(spec.classes),
        "batch_size": spec.batch_size or "auto",  # as asked; per partition: the size that fitted
        "max_error_ratio": max_error_ratio,
        "rows": rows,
        "errors": errors,
        "labelled": sum(p.stats["labelled"] for p in parts),
        "batch_sizes_used": sorted({p.batch_size for p in parts if p.batch_size}),
        # where the partitions were computed: backend, device kind and name, framework versions
        "devices": [json.loads(d) for d in sorted({json.dumps(p.device, sort_keys=True) for p in parts
                                                   if p.device})],
        "partitions": [{k: getattr(p, k) for k in ("partition", "rows", "errors", "batch_size", "seconds", "worker")}
                       for p in parts],
        "wall_seconds": round(wall, 3),
        "images_per_second": round(scored_now / wall, 1) if todo else None,
        "committed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    })
    # every task has answered: a temporary file left now is a killed worker's, half written and unread
    store.sweep_temporary(layout.run_path(spec.run_id))
    manifest_rel = layout.run_path(spec.run_id, layout.RUN_MANIFEST)
    if store.exists(manifest_rel):  # recommitted (appended, or mended): the night keeps its place in time
        first = read_json(store, manifest_rel)
        manifest.extra["recommitted_at"], manifest.committed_at = manifest.committed_at, first["committed_at"]
    store.write_json(manifest_rel, manifest.to_dict())
    return manifest
