"""Late labels at scale: labels that arrive days after a night of predictions, added without
rescoring, and what they say about the night.

    python benchmarks/late_labels.py [--root benchmarks/out/late-labels-store] [--images 1000000]

Builds a dataset of ``--images`` CIFAR-10 test images (the 10,000 repeated, every other copy
flipped and re-encoded) with no labels, in partitions of 2,000, and scores it once with the
store's production model (else the tutorial CNN trained for one epoch). Then:
(a) ``labels add`` of three random batches covering 10% of the rows, timed in a fresh process
    (its peak RSS too: it must stay flat as the predictions grow);
(b) the same three files added again: the files written under the run's labels (must be 0);
(c) the run's folded statistics against what the same labels give at ingest: scoring's own
    ``PartitionStats.from_predictions`` on the stored probabilities with the labels in place,
    partition by partition (``realized_equals_ingest_time``; tests/test_labels_scored.py does
    the same against a real labelled run);
(d) an uncertain-first sample of 10% (weights (1 - confidence)^5 + 0.003), folded in memory
    through the same join and delta: its raw accuracy, and the accuracy reweighted by confidence
    bin, against the night's true accuracy;
(e) the join on the workers (one task per partition) against the client's, timed alike.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from cifar_store import cifar10_store
from PIL import Image

from batchml import layout
from batchml.cluster import ClusterConfig, connect
from batchml.data import datasets
from batchml.data.ingest import write_dataset
from batchml.data.sources import Source, SourceImage
from batchml.labels import realized
from batchml.labels.join import delta, match_partition
from batchml.monitoring import fold_run
from batchml.monitoring.classes import per_class_metrics
from batchml.records import RunManifest
from batchml.score.scoring import ScoreConfig, score
from batchml.stats import LABEL_FIELDS, PartitionStats
from batchml.store import Store, StoreConfig

COVERAGE = 0.10  # labelled share of the rows, in three batches
BATCH_SHARES = (0.4, 0.3, 0.3)
UNCERTAIN_POWER, UNCERTAIN_FLOOR = 5.0, 0.003  # an uncertain-first review queue that still reaches confident rows


# -- the night -------------------------------------------------------------------------------------


def flipped(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def prepare(store: Store, n_images: int) -> tuple[str, dict[str, int], list[str]]:
    """The unlabelled dataset's name, the true label of each test image id, and the classes."""
    _, test, classes = cifar10_store(store)
    copies = max(1, n_images // len(test))
    name = f"unlabelled-{copies}x"
    if not store.exists(layout.dataset_path(name, layout.DATASET_MANIFEST)):
        mirrored = [flipped(t["image"]) for t in test]

        def images():
            for c in range(copies):
                for t, m in zip(test, mirrored, strict=True):
                    yield SourceImage(f"{t['image_id']}#{c}", m if c % 2 else t["image"], None)

        write_dataset(store, Source(f"CIFAR-10 test x{copies}, unlabelled", classes, images()), name,
                      "test", datasets.DEFAULT_PARTITION_SIZE, verbose=False)
    return name, {t["image_id"]: t["label"] for t in test}, classes


def scored(store: Store, dataset: str, run_id: str) -> tuple[RunManifest, float]:
    if store.exists(layout.run_path(run_id, layout.RUN_MANIFEST)):
        return RunManifest.read(store, run_id), 0.0
    started = time.perf_counter()
    with connect(ClusterConfig()) as client:
        manifest = score(client, store, ScoreConfig(dataset, run_id=run_id), verbose=False)
    return manifest, time.perf_counter() - started


def scan(store: Store, run: RunManifest, truth: dict[str, int]):
    """Per partition: image ids, true labels, predicted class, top probability (one pass, one
    partition at a time)."""
    for p in run.partitions:
        t = store.read_parquet(layout.run_output(run.run_id, "predictions", p["partition"]),
                               columns=["image_id", "predicted", "probability", "probabilities", "novelty"])
        ids = t["image_id"].to_pylist()
        yield p["partition"], t, ids, np.array([truth[i.rsplit("#", 1)[0]] for i in ids], np.int64)


# -- labels ----------------------------------------------------------------------------------------


def write_batches(store: Store, run: RunManifest, truth: dict[str, int], classes: list[str], out: Path,
                  seed: int = 0) -> tuple[list[str], set[str]]:
    """Three random batches covering ``COVERAGE`` of the rows, as Parquet files of class names."""
    rng = np.random.default_rng(seed)
    chosen = [[] for _ in BATCH_SHARES]
    for _, _, ids, true in scan(store, run, truth):
        pick = rng.random(len(ids)) < COVERAGE
        which = rng.choice(len(BATCH_SHARES), len(ids), p=BATCH_SHARES)
        for i in np.flatnonzero(pick):
            chosen[which[i]].append((ids[i], classes[true[i]]))
    files = []
    for b, rows in enumerate(chosen):
        path = out / f"labels-{run.run_id}-{b}.parquet"
        pd.DataFrame({"image_id": [r[0] for r in rows], "label": [r[1] for r in rows],
                      "labelled_at": f"2026-12-0{b + 1}T10:00:00Z", "source": f"review-{b}"}).to_parquet(path)
        files.append(str(path))
    return files, {r[0] for rows in chosen for r in rows}


# run in a fresh process that imports no more than ``batchml labels add`` needs (no Keras): its peak
# RSS is what adding labels costs
MEASURE = """
import json, resource, sys, time
from batchml.labels import add_labels
from batchml.store import Store, StoreConfig
root, run_id, files = sys.argv[1], sys.argv[2], sys.argv[3:]
store = Store(StoreConfig(root))
started = time.perf_counter()
added = [a for f in files for a in add_labels(store, f, [run_id])]
print(json.dumps({"seconds": time.perf_counter() - started, "labels": sum(a.new + a.replaced for a in added),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def add_measured(root: str, run_id: str, files: list[str]) -> dict:
    """``labels add`` of ``files`` in a fresh process: seconds and that process's peak RSS (MB)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, root, run_id, *files], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def files_under(store: Store, rel: str) -> dict[str, int]:
    root = store.path(rel)
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(root) for f in fs}


# -- what the labels say ------------------------------------------------------------------------------


def ingest_time_equality(store: Store, run: RunManifest, truth: dict[str, int], labelled: set[str],
                         folded: PartitionStats) -> tuple[bool, float]:
    """Whether the folded label fields equal scoring's own statistics with the labels in place
    (on the stored probabilities, partition by partition); and the night's true accuracy."""
    k = len(run.classes)
    at_ingest, right, rows = PartitionStats(k), 0, 0
    for _, t, ids, true in scan(store, run, truth):
        probs = np.asarray(t["probabilities"].combine_chunks().flatten()).reshape(-1, k)
        labels = np.where([i in labelled for i in ids], true, -1)
        novelty = t["novelty"].to_numpy(zero_copy_only=False).astype(np.float64) if t["novelty"].null_count == 0 \
            else None
        at_ingest = at_ingest + PartitionStats.from_predictions(probs, labels, novelty=novelty)
        right += int((t["predicted"].to_numpy() == true).sum())
        rows += len(ids)
    same = all(np.array_equal(getattr(folded, f), getattr(at_ingest, f)) for f in LABEL_FIELDS)
    same = same and per_class_metrics(folded.confusion) == per_class_metrics(at_ingest.confusion)
    return same, right / rows


def uncertain_sample(store: Store, run: RunManifest, truth: dict[str, int], base: PartitionStats,
                     seed: int = 1) -> tuple[float, float]:
    """An uncertain-first sample of about ``COVERAGE`` of the rows (Poisson sampling, inclusion
    proportional to (1 - confidence)^5 + 0.003) folded in memory through the join's ``delta``: its raw
    accuracy and its accuracy reweighted by confidence bin."""
    rng = np.random.default_rng(seed)
    weights = {p: (1.0 - t["probability"].to_numpy().astype(np.float64)) ** UNCERTAIN_POWER + UNCERTAIN_FLOOR
               for p, t, _, _ in scan(store, run, truth)}
    scale = COVERAGE * run.rows / sum(float(w.sum()) for w in weights.values())
    parts = []
    for partition, t, _, true in scan(store, run, truth):
        pick = rng.random(t.num_rows) < np.minimum(1.0, weights[partition] * scale)
        n, mask = int(pick.sum()), pa.array(pick)
        parts.append(pa.table({
            "predicted": t["predicted"].filter(mask), "probability": t["probability"].filter(mask),
            "novelty": t["novelty"].filter(mask), "label": pa.array(true[pick], pa.int16()),
            "previous": pa.nulls(n, pa.int16()), "stats_segment": pa.nulls(n, pa.string())}))
    stats = base + delta(pa.concat_tables(parts), len(run.classes))
    return stats.correct / stats.labelled, realized(stats, ["uncertain"])["realized_accuracy"]


# -- where the join runs --------------------------------------------------------------------------------


def _match(config: StoreConfig, run_id: str, partition: str, ids: pa.Array) -> int:
    return match_partition(Store(config), run_id, partition, ids).num_rows


def join_seconds(store: Store, run: RunManifest, files: list[str]) -> dict:
    """The join of every labels file's ids, on the client partition by partition and as one task per
    partition on a local cluster (started before the clock, as a nightly job's cluster is running)."""
    ids = pa.concat_arrays([pa.array(pd.read_parquet(f, columns=["image_id"]).image_id) for f in files])
    names = [p["partition"] for p in run.partitions]
    started = time.perf_counter()
    client_rows = sum(match_partition(store, run.run_id, p, ids).num_rows for p in names)
    on_client = time.perf_counter() - started
    with connect(ClusterConfig()) as client:
        [shared] = client.scatter([ids], broadcast=True)
        started = time.perf_counter()
        futures = client.map(_match, [store.config] * len(names), [run.run_id] * len(names), names,
                             [shared] * len(names))
        worker_rows = sum(client.gather(futures))
        on_workers = time.perf_counter() - started
    assert client_rows == worker_rows
    return {"join_seconds_client": round(on_client, 2), "join_seconds_workers": round(on_workers, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).parent / "out" / "late-labels-store"))
    parser.add_argument("--images", type=int, default=1_000_000)
    args = parser.parse_args()
    store = Store(StoreConfig(args.root))
    out = Path(args.root).parent
    t = time.perf_counter()
    dataset, truth, classes = prepare(store, args.images)
    print(f"dataset {dataset} ready in {time.perf_counter() - t:.0f}s")
    run, scoring = scored(store, dataset, f"late-{dataset}")
    print(f"run {run.run_id}: {run.rows:,} predictions" + (f", scored in {scoring:.0f}s" if scoring else ""))
    store.delete(layout.run_labels(run.run_id), recursive=True)  # a fresh start for the labels
    _, base = fold_run(store, run.run_id)
    files, labelled = write_batches(store, run, truth, classes, out)
    first = add_measured(args.root, run.run_id, files)
    print(f"labels add: {first['labels']:,} labels in 3 batches, {first['seconds']:.1f}s, "
          f"peak RSS {first['peak_rss_mb']:.0f} MB")
    before = files_under(store, layout.run_labels(run.run_id))
    add_measured(args.root, run.run_id, files)
    after = files_under(store, layout.run_labels(run.run_id))
    rerun_writes = sum(1 for f, m in after.items() if before.get(f) != m)
    _, folded = fold_run(store, run.run_id)
    equal, night_accuracy = ingest_time_equality(store, run, truth, labelled, folded)
    raw, reweighted = uncertain_sample(store, run, truth, base)
    print(f"night accuracy {night_accuracy:.4f}; realized from the random batches "
          f"{folded.correct / folded.labelled:.4f}; uncertain-first sample raw {raw:.4f}, reweighted {reweighted:.4f}")
    joins = join_seconds(store, run, files)
    print(f"join: {joins['join_seconds_client']}s on the client, {joins['join_seconds_workers']}s on the workers")
    figures = {
        "predictions": run.rows, "labels": first["labels"], "seconds": round(first["seconds"], 2),
        "peak_rss_mb": round(first["peak_rss_mb"], 1), "realized_equals_ingest_time": equal,
        "rerun_writes": rerun_writes,
        "uncertain_sample_error_points": round(100 * abs(reweighted - night_accuracy), 2),
        "uncertain_sample_raw_error_points": round(100 * (night_accuracy - raw), 2),
        "night_accuracy": round(night_accuracy, 4), **joins,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
