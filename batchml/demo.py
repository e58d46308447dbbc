"""The main job on the embedded default: the whole flow, end to end, on real CIFAR-10.

ingest train and test -> train the fast net on the cluster -> promote -> score two nights
cut from the test images (a clean one, and one where a class is three times as common)
-> monitor each: the second raises a class-mix alert -> print where everything is and
the command that opens the dashboard on it.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from batchml import layout
from batchml.cluster import ClusterConfig, connect
from batchml.data import datasets
from batchml.data.ingest import ingest, write_dataset
from batchml.data.sources import Source, SourceImage
from batchml.errors import BatchmlError
from batchml.registry import DEFAULT_ALIAS, promote
from batchml.score.scoring import ScoreConfig
from batchml.store import Store

if TYPE_CHECKING:
    from batchml.monitoring import RunReport


@dataclass(frozen=True)
class DemoConfig:
    source: str = "cifar10"  # a CIFAR-10 source (see ``batchml.data.sources``); the CLI looks for a local copy first
    # the budget that fits the demo in 12 minutes with set-up on 2 cores (README, "Measured
    # here"): 8 epochs of the fast net, about 6 minutes; flip test-time augmentation scores 3x
    # faster than flip-translate for about 0.4 points less
    arch: str = "fast"
    epochs: int = 8
    tta: str = "flip"
    night_size: int = 3000  # images per night, drawn from the 10,000 test images
    shifted_class: str = "cat"  # over-represented on night 2 (the first class if absent)
    boost: float = 3.0  # ... at this many times its share
    partition_size: int = datasets.DEFAULT_PARTITION_SIZE
    seed: int = 0


def run_demo(store: Store, cluster: ClusterConfig, cfg: DemoConfig) -> list[RunReport]:
    # monitoring and training (scipy) are imported by the commands that use them, not by every command
    from batchml.monitoring import format_report
    from batchml.night import score_and_monitor
    from batchml.train.training import TrainConfig, train

    started = time.perf_counter()
    source = cfg.source
    print(f"demo: store {store.url()}, source {source}")
    for split in ("train", "test"):
        result = ingest(store, source, f"cifar10-{split}", split, cfg.partition_size)
        print(f"demo: dataset {result.dataset}: {result.rows:,} images in {result.partitions} "
              f"partitions ({result.written} written now) at {result.url}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    nights = make_nights(store, "cifar10-test", stamp, cfg)
    reports = []
    with connect(cluster, verbose=True) as client:
        tcfg = TrainConfig(dataset="cifar10-train", test_dataset="cifar10-test", arch=cfg.arch, epochs=cfg.epochs,
                           tta=cfg.tta)
        mv, card = train(client, store, tcfg)
        promote(store, mv, DEFAULT_ALIAS)
        print(f"demo: trained {mv} ({cfg.arch} net, {cfg.epochs} epochs) in {card.training_seconds:.0f}s, "
              f"test accuracy {card.test_accuracy:.4f}; promoted to {DEFAULT_ALIAS}")
        for night, (dataset, what) in enumerate(nights, start=1):
            run_id = f"demo-{stamp}-night-{night}"
            manifest, report = score_and_monitor(lambda: contextlib.nullcontext(client), store,
                                                 ScoreConfig(dataset=dataset, run_id=run_id))
            print(f"\ndemo: night {night} ({what}): run {run_id}: {manifest.rows:,} rows at "
                  f"{manifest.images_per_second} images/s")
            print(format_report(report))
            reports.append(report)

    print(f"\ndemo: done in {time.perf_counter() - started:.0f}s. Everything is under {store.url()}:")
    for what, rel in [("input partitions", f"{layout.DATASETS}/"),
                      ("model versions", f"{layout.model_prefix(mv.name)}/"),
                      ("runs (predictions, stats, manifest)", f"{layout.RUNS}/"),
                      ("monitoring tables", f"{layout.MONITORING}/")]:
        print(f"  {what:38} {store.url(rel)}")
    last = store.url(layout.run_path(reports[-1].row.run_id, "predictions"))
    print(f"  read them with: pandas.read_parquet('{last}')")
    print(f"  or DuckDB: SELECT count(*) FROM '{store.url(layout.RUNS)}/*/predictions/*.parquet'")
    print(f"\nOpen the monitoring dashboard on it (then http://127.0.0.1:5006/):\n"
          f"  batchml dashboard --root {shlex.quote(store.config.root)}")
    return reports


def make_nights(store: Store, test_dataset: str, stamp: str, cfg: DemoConfig) -> list[tuple[str, str]]:
    """Two datasets cut from ``test_dataset``'s labelled images: a uniform sample, and one where
    ``cfg.shifted_class`` is ``cfg.boost`` times as common. Returns (dataset, description) pairs."""
    manifest = datasets.read_manifest(store, test_dataset)
    classes = manifest.classes
    rows = [r for p in manifest.partitions for r in datasets.read_partition(store, test_dataset, p["name"])
            .select(["image_id", "image", "label"]).to_pylist()]
    labels = np.array([-1 if r["label"] is None else r["label"] for r in rows])
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.night_size, len(rows) // 2)  # night 2 needs images night 1 did not take
    clean = rng.choice(len(rows), n, replace=False)

    k = classes.index(cfg.shifted_class) if cfg.shifted_class in classes else 0
    share = min(0.9, cfg.boost * float(np.mean(labels == k)))
    # night 2 takes none of night 1's images: a repeated image is a duplicate, which would alert first
    unused = np.setdiff1d(np.arange(len(rows)), clean)
    mine, others = unused[labels[unused] == k], unused[labels[unused] != k]
    n_mine = min(len(mine), round(n * share))
    if n_mine == 0:
        raise BatchmlError(f"demo: dataset {test_dataset!r} has too few {classes[k]!r} images left for the "
                           f"shifted night ({len(rows)} images in all): ingest a larger test set")
    n_others = min(len(others), round(n_mine * (1 - share) / share))
    shifted = np.concatenate([rng.choice(mine, n_mine, replace=False), rng.choice(others, n_others, replace=False)])
    rng.shuffle(shifted)

    nights = []
    for name, picked, what in [(f"demo-night-1-{stamp}", clean, "a clean sample of the test images"),
                               (f"demo-night-2-{stamp}", shifted,
                                f"{classes[k]} {n_mine / len(shifted):.0%} of the images instead of "
                                f"{np.mean(labels == k):.0%}")]:
        images = (SourceImage(rows[i]["image_id"], rows[i]["image"], rows[i]["label"]) for i in picked)
        write_dataset(store, Source(what, classes, images, len(picked)), name, "test", cfg.partition_size,
                      verbose=False)
        nights.append((name, what))
    return nights
