"""Hyperparameter sweeps: every trial a training task, run across the workers one trial
per worker at a time, recorded in a table under the store; the best by validation
accuracy is then tested (the test set's one use) and registered.

Store layout, per sweep::

    sweeps/<id>/sweep.json          the space, the trials' configurations, then the result
    sweeps/<id>/trials.parquet      one row per finished trial (rewritten as trials finish)
    sweeps/<id>/trial-NNN/          the trial's model and card, until the sweep registers its best

Rerunning a sweep id runs only the trials missing from its table.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import pyarrow as pa

from batchml import layout
from batchml.cluster import TRAIN_GPU_SHARE, gpu_resources
from batchml.device import device_label, device_lock
from batchml.errors import BatchmlError
from batchml.progress import Progress
from batchml.records import ModelCard, Sweep
from batchml.registry import ModelVersion, load_model_bytes, model_bytes
from batchml.store import Store, StoreConfig
from batchml.train.recipes import SETTINGS, TUNABLE, setting_type
from batchml.train.training import TrainConfig, check, fit, register_trained

_TYPES = {s.name: setting_type(s) for s in SETTINGS if s.name in TUNABLE}


@dataclass(frozen=True)
class SweepConfig:
    base: TrainConfig  # dataset, arch, and the values not swept
    space: dict[str, list]  # hyperparameter -> values to try
    trials: int | None = None  # random search: this many distinct points; None: the whole grid
    sweep_id: str | None = None  # default: sweep-<UTC time>
    seed: int = 0  # of the random search


def parse_space(specs: list[str]) -> dict[str, list]:
    """``["learning_rate=0.1,0.2", "width=16,32"]`` -> ``{"learning_rate": [0.1, 0.2], "width": [16, 32]}``."""
    space = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if name not in TUNABLE or not values:
            raise BatchmlError(f"sweep parameter {spec!r}: write NAME=V1,V2,... with NAME one of {', '.join(TUNABLE)}")
        try:
            space[name] = [_TYPES[name](v) for v in values.split(",")]
        except ValueError:
            raise BatchmlError(f"sweep parameter {spec!r}: {values!r} are not numbers") from None
    if not space:
        raise BatchmlError("a sweep needs at least one --param NAME=V1,V2,...")
    return space


def trial_configs(cfg: SweepConfig) -> list[dict]:
    """The points to try: the whole grid in order, or ``trials`` of them drawn without replacement."""
    grid = [dict(zip(cfg.space, values, strict=True)) for values in itertools.product(*cfg.space.values())]
    if cfg.trials is None or cfg.trials >= len(grid):
        return grid
    return random.Random(cfg.seed).sample(grid, cfg.trials)


def sweep(client, store: Store, cfg: SweepConfig, verbose: bool = True) -> Sweep:
    """Run the trials not yet in the table, then test and register the best. Returns sweep.json."""
    base = check(store, cfg.base)
    sweep_id = layout.check_name("sweep", cfg.sweep_id or f"sweep-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    points = trial_configs(cfg)
    plan = Sweep.written({"sweep_id": sweep_id, "base": asdict(base), "space": cfg.space, "trials": points})
    rel = layout.sweep_path(sweep_id, layout.SWEEP_PLAN)
    if store.exists(rel):
        before = Sweep.from_dict(store.read_json(rel))
        if before.trials != points or before.base != plan.base:
            raise BatchmlError(f"sweep {sweep_id!r} was started with other settings: choose another --sweep-id")
        if before.finished:
            if verbose:
                print(f"sweep: {sweep_id} is finished; best trial {before.best_trial} is {before.registered}")
            return before
    else:
        store.write_json(rel, plan.to_dict())

    rows = read_trials(store, sweep_id)
    todo = [i for i in range(len(points)) if i not in {r["trial"] for r in rows}]
    progress = Progress(f"sweep {sweep_id}", total=len(points), unit="trials", enabled=verbose,
                        done=len(points) - len(todo))
    for row in _run_trials(client, store, base, sweep_id, points, todo):
        rows.append(row)
        store.write_parquet(layout.sweep_path(sweep_id, layout.SWEEP_TRIALS), _table(rows))
        progress.update(1, f"trial {row['trial']}: validation accuracy {row['validation_accuracy']:.4f} "
                           f"in {row['seconds']:.0f}s {json.loads(row['params'])}")
    progress.close()

    # ties go to the lowest trial number, whatever order the trials finished in
    best = max(sorted(rows, key=lambda r: r["trial"]), key=lambda r: r["validation_accuracy"])
    trial_cfg = replace(base, **points[best["trial"]])
    card = client.submit(register_trial_task, store.config, trial_cfg, sweep_id, best["trial"], pure=False,
                         resources=gpu_resources(client, TRAIN_GPU_SHARE)).result()
    mv = ModelVersion(card.name, card.version)
    for r in rows:  # the losers' models go; their rows stay
        if r["trial"] != best["trial"]:
            store.delete(layout.sweep_path(sweep_id, layout.trial_name(r["trial"])), recursive=True)
    result = replace(plan, best_trial=best["trial"], best_params=points[best["trial"]],
                     best_validation_accuracy=best["validation_accuracy"], registered=str(mv),
                     test_accuracy=card.test_accuracy, finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
    store.write_json(rel, result.to_dict())
    return result


def _run_trials(client, store: Store, base: TrainConfig, sweep_id: str, points: list[dict], todo: list[int]):
    """Yield trial rows as they finish, with at most one trial per worker in flight."""
    from distributed import as_completed

    slots = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    resources = gpu_resources(client, TRAIN_GPU_SHARE)  # one trial per GPU: trials spread over the GPUs
    queue = list(todo)
    pending = as_completed()

    def submit_next() -> None:
        i = queue.pop(0)
        pending.add(client.submit(trial_task, store.config, replace(base, **points[i]), sweep_id, i, pure=False,
                                  resources=resources))

    for _ in range(min(slots, len(queue))):
        submit_next()
    try:
        for future in pending:
            yield future.result()
            if queue:
                submit_next()
    except BaseException:
        client.cancel(list(pending.futures))
        raise


def trial_task(store_cfg: StoreConfig, cfg: TrainConfig, sweep_id: str, trial: int) -> dict:
    """Train one trial (no test set), keep its model and card under the sweep, return its row."""
    store = Store(store_cfg)
    with device_lock():
        model, card = fit(store, cfg)
    store.write_bytes(layout.trial_path(sweep_id, trial, layout.MODEL_FILE), model_bytes(model))
    store.write_json(layout.trial_path(sweep_id, trial, layout.CARD_FILE), card.to_dict())
    curves = card.learning_curves
    return {
        "trial": trial,
        "params": json.dumps({k: getattr(cfg, k) for k in TUNABLE if getattr(cfg, k) is not None}),
        "recipe": json.dumps(card.training["recipe"]),
        "validation_accuracy": card.metrics.validation.accuracy,
        "validation_loss": card.metrics.validation.loss,
        "epochs": len(curves["loss"]),
        "curves": json.dumps(curves),
        "fit": card.fit.verdict,
        "seconds": card.training_seconds,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "device": device_label(card.device),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def register_trial_task(store_cfg: StoreConfig, cfg: TrainConfig, sweep_id: str, trial: int) -> ModelCard:
    """Test the chosen trial's model once and register it with its card."""
    store = Store(store_cfg)
    card = ModelCard.from_dict(store.read_json(layout.trial_path(sweep_id, trial, layout.CARD_FILE)))
    card.training["sweep"] = {"sweep_id": sweep_id, "trial": trial}
    with device_lock():
        model = load_model_bytes(store.read_bytes(layout.trial_path(sweep_id, trial, layout.MODEL_FILE)))
        return register_trained(store, cfg, model, card)


def read_trials(store: Store, sweep_id: str) -> list[dict]:
    rel = layout.sweep_path(sweep_id, layout.SWEEP_TRIALS)
    return store.read_parquet(rel).to_pylist() if store.exists(rel) else []


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(sorted(rows, key=lambda r: r["trial"]))
