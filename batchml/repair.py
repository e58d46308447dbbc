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
from batchml.records import RunManifest
from batchml.store import Store


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
    from batchml.score.scoring import ScoreConfig, score

    spec_rel = layout.run_path(run_id, layout.RUN_SPEC)
    if not store.exists(spec_rel):  # quarantined: rebuilt from the manifest, which repeats it
        _rebuild_spec(store, run_id)
    run = read_json(store, spec_rel)
    previous = RunManifest.read(store, run_id) if store.exists(layout.run_path(run_id, layout.RUN_MANIFEST)) else None
    images = run.get("input") == "images"
    cfg = ScoreConfig(None if images else run["dataset"], run["model_version"], run_id,
                      max_error_ratio=previous.max_error_ratio if previous else 0.01,
                      images=run["dataset"] if images else None,
                      partition_size=run.get("partition_size") or datasets.DEFAULT_PARTITION_SIZE)
    _say(verbose, f"doctor: scoring run {run_id} again where it lacks partitions")
    score(client, store, cfg, verbose=verbose)


def _rebuild_spec(store: Store, run_id: str) -> None:
    manifest = read_json(store, layout.run_path(run_id, layout.RUN_MANIFEST))
    keys = ("run_id", "dataset", "input", "dataset_fingerprint", "partition_size", "model_version", "model_ref",
            "created_at")
    store.create(layout.run_path(run_id, layout.RUN_SPEC),
                 (json.dumps({k: manifest.get(k) for k in keys}, indent=1) + "\n").encode())


def _remonitor(store: Store, run_id: str, verbose: bool) -> None:
    from batchml.monitoring import monitor_run

    report = monitor_run(store, run_id)
    _say(verbose, f"doctor: monitored run {run_id} again ({len(report.alerts)} alerts)")


def _say(verbose: bool, line: str) -> None:
    if verbose:
        print(line, file=sys.stderr, flush=True)
