"""The main job on the embedded default: the whole flow, end to end, on real CIFAR-10.

ingest train and test -> train briefly on the cluster -> promote -> score the test
images as several nightly runs -> monitor each -> print where everything is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from batchml.cluster import ClusterConfig, connect
from batchml.ingest import ingest
from batchml.monitoring import format_report, monitor_run
from batchml.registry import promote
from batchml.scoring import ScoreConfig, score
from batchml.sources import find_source
from batchml.store import Store
from batchml.training import TrainConfig, train


@dataclass(frozen=True)
class DemoConfig:
    source: str | None = None  # default: ../shared/data/cifar10-jpeg.tar.gz, else Keras's download
    epochs: int = 5  # about 70% test accuracy in under 10 minutes on 2 CPU cores
    nights: int = 2
    partition_size: int = 2000


def run_demo(store: Store, cluster: ClusterConfig, cfg: DemoConfig) -> list[dict]:
    started = time.perf_counter()
    source = cfg.source or find_source()
    print(f"demo: store {store.url()}, source {source}")
    for split in ("train", "test"):
        result = ingest(store, source, f"cifar10-{split}", split, cfg.partition_size)
        print(f"demo: dataset {result.dataset}: {result.rows:,} images in {result.partitions} "
              f"partitions ({result.written} written now) at {result.url}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    reports = []
    with connect(cluster, verbose=True) as client:
        tcfg = TrainConfig(dataset="cifar10-train", test_dataset="cifar10-test", epochs=cfg.epochs)
        mv, card = train(client, store, tcfg)
        promote(store, mv, "production")
        print(f"demo: trained {mv} in {card['training']['seconds']:.0f}s, test accuracy "
              f"{card['metrics']['test']['accuracy']:.4f}; promoted to production")
        for night in range(1, cfg.nights + 1):
            run_id = f"demo-{stamp}-night-{night}"
            manifest = score(client, store, ScoreConfig(dataset="cifar10-test", run_id=run_id))
            print(f"demo: run {run_id}: {manifest['rows']:,} rows at {manifest['images_per_second']} images/s")
            report = monitor_run(store, run_id)
            print(format_report(report))
            reports.append(report.row)

    print(f"\ndemo: done in {time.perf_counter() - started:.0f}s. Everything is under {store.url()}:")
    for what, rel in [("input partitions", "images/"), ("model versions", f"models/{mv.name}/"),
                      ("runs (predictions, stats, manifest)", "runs/"), ("monitoring tables", "monitoring/")]:
        print(f"  {what:38} {store.url(rel)}")
    last = store.url(f"runs/{reports[-1]['run_id']}/predictions")
    print(f"  read them with: pandas.read_parquet('{last}')")
    print(f"  or DuckDB: SELECT count(*) FROM '{store.url('runs')}/*/predictions/*.parquet'")
    return reports
