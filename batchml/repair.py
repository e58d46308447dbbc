"""``batchml doctor --repair``: move the damaged files a checkup found (``batchml.doctor``) under
``quarantine/`` (never delete them), score again the partitions they held, commit again and
monitor again; what needs a person is returned, one line each.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from batchml import layout
from batchml.data import datasets
from batchml.doctor import BY_HAND, RECOMMIT, REMONITOR, RESCORE, Checkup
from batchml.errors import BatchmlError
from batchml.integrity import read_json
from batchml.records import RunManifest, RunStart
from batchml.score.resume import INPUTS
from batchml.store import Store, options_for


def quarantine(store: Store, rel: str, stamp: str) -> str | None:
    """Move ``rel`` to ``quarantine/<stamp>/<rel>`` (copied whole, then removed); its new path, or
    None where it was already gone."""
    if not store.exists(rel):
        return None
    target = layout.quarantine_path(stamp, rel)
    store.write_bytes(target, store.read_bytes(rel))
    store.delete(rel)
    return target


def repair(store: Store, checkup: Checkup, open_client: Callable[[], contextlib.AbstractContextManager],
           verbose: bool = True) -> list[str]:
    """Quarantine every damaged file ``--repair`` can rebuild, score and commit again the runs that
    held them (``open_client``: a Dask client, opened only when a run needs scoring), then monitor
    again the runs monitored before or whose monitoring files were damaged. Returns what could not
    be repaired, one line each."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    fixable = [f for f in checkup.findings if f.action != BY_HAND]
    for f in fixable:
        for rel in (f.path, *f.also):
            if moved := quarantine(store, rel, stamp):
                _say(verbose, f"doctor: moved {store.url(rel)} to {store.url(moved)}")
    failed = [f"{store.url(f.path)}: {f.fix}" for f in checkup.findings if f.action == BY_HAND]
    rescore = sorted({f.run_id for f in fixable if f.action in (RESCORE, RECOMMIT)})
    remonitor = {f.run_id for f in fixable if f.action == REMONITOR}
    unscored = set()
    if rescore:
        with open_client() as client:
            for run_id in rescore:
                try:
                    _rescore(client, store, run_id, verbose)
                except BatchmlError as exc:
                    failed.append(f"run {run_id}: could not score it again: {exc}")
                    unscored.add(run_id)
                    continue
                if store.exists(layout.monitoring_path("runs", run_id)):
                    remonitor.add(run_id)
    for run_id in sorted(remonitor - unscored):
        try:
            _remonitor(store, run_id, verbose)
        except BatchmlError as exc:
            failed.append(f"run {run_id}: could not monitor it again: {exc}")
    return failed


def _rescore(client, store: Store, run_id: str, verbose: bool) -> None:
    from batchml.score.resume import pinned_plan
    from batchml.score.scoring import ScoreConfig, score

    run = _rebuild_listing(store, run_id)
    manifest_rel = layout.run_path(run_id, layout.RUN_MANIFEST)
    previous = RunManifest.read(store, run_id) if store.exists(manifest_rel) else None
    images = run.input == "images"
    cfg = ScoreConfig(None if images else run.dataset, run.model_version, run_id,
                      max_error_ratio=previous.max_error_ratio if previous else 0.01,
                      images=run.dataset if images else None,
                      partition_size=run.partition_size or datasets.DEFAULT_PARTITION_SIZE)
    _say(verbose, f"doctor: scoring run {run_id} again where it lacks partitions")
    # a prefix's run is scored from the listing it pinned: a commit from the statistics needs no input
    score(client, store, cfg, verbose=verbose, plan=pinned_plan(store, run) if images else None)


def _rebuild_listing(store: Store, run_id: str) -> RunStart:
    """The run's record, ``run.json`` rebuilt where it was set aside (from the manifest, which repeats
    it), and for a prefix's run the pinned listing of each partition that lost it (run.json's, or a
    damaged append record's) rebuilt from the partition's predictions and error rows."""
    spec_rel, manifest_rel = layout.run_path(run_id, layout.RUN_SPEC), layout.run_path(run_id, layout.RUN_MANIFEST)
    manifest = read_json(store, manifest_rel) if store.exists(manifest_rel) else None
    names = ([p["partition"] for p in manifest["partitions"]] if manifest else
             [n.removesuffix(".json") + ".parquet" for n in store.list(layout.run_path(run_id, "stats"), ".json")])
    appended = {}  # partition -> listing, of the append records still whole
    for name in store.list(layout.run_appends(run_id), ".json"):
        appended.update(read_json(store, f"{layout.run_appends(run_id)}/{name}")[INPUTS])
    sizes = _ListedSizes(store)
    if not store.exists(spec_rel):
        if manifest is None:
            raise BatchmlError(f"run {run_id} has neither run.json nor a manifest to rebuild it from: score its "
                               "input under a new --run-id")
        fields = {k: manifest[k] for k in RunStart.__dataclass_fields__ if k in manifest and k != "extra"}
        spec = RunStart.from_dict(fields).to_dict()
        if manifest.get("input") == "images":
            original = names[:len(names) - (manifest.get("appended_partitions") or 0)]
            spec[INPUTS] = _listing(store, run_id, [n for n in original if n not in appended], sizes(spec))
        store.create(spec_rel, (json.dumps(spec, indent=1, sort_keys=True) + "\n").encode())
    run = RunStart.from_dict(read_json(store, spec_rel))
    if run.input != "images" or INPUTS not in run.extra:
        return run
    if lost := [n for n in names if n not in run.extra[INPUTS] and n not in appended]:
        number = next(i for i in range(len(names) + 1) if not store.exists(layout.run_append(run_id, i)))
        record = {"appended_at": datetime.now(UTC).isoformat(timespec="seconds"), "rebuilt_by": "doctor --repair",
                  INPUTS: _listing(store, run_id, lost, sizes(run.to_dict()))}
        store.create(layout.run_append(run_id, number), (json.dumps(record, indent=1) + "\n").encode())
    return run


def _listing(store: Store, run_id: str, partitions: list[str], sizes: dict[str, int | None]) -> dict[str, list]:
    """partition -> [[file, size], ...] from what the run wrote of it, with ``sizes`` (``_ListedSizes``)."""
    out = {}
    for name in partitions:
        ids = []
        for kind in ("predictions", "errors"):
            if store.exists(rel := layout.run_output(run_id, kind, name)):
                ids += store.read_parquet(rel, columns=["image_id"])["image_id"].to_pylist()
        out[name] = [[f, sizes.get(f)] for f in sorted(ids)]
    return out


class _ListedSizes:
    """The sizes of a run's prefix as it lists now, listed once (a prefix may hold millions of files);
    none where it cannot be listed: the files are then read, not checked, when scored again."""

    def __init__(self, store: Store) -> None:
        self.store, self.sizes = store, None

    def __call__(self, run: dict) -> dict[str, int | None]:
        from batchml.data import inputs

        if self.sizes is None:
            try:
                self.sizes = inputs.plan_prefix(run["dataset"], options_for(run["dataset"], self.store),
                                                run["partition_size"]).sizes
            except BatchmlError:
                self.sizes = {}
        return self.sizes


def _remonitor(store: Store, run_id: str, verbose: bool) -> None:
    from batchml.monitoring import monitor_run

    report = monitor_run(store, run_id)
    _say(verbose, f"doctor: monitored run {run_id} again ({len(report.alerts)} alerts)")


def _say(verbose: bool, line: str) -> None:
    if verbose:
        print(line, file=sys.stderr, flush=True)
