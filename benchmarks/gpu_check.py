"""One-command GPU check: batchml's own cluster trains and scores on the GPU, beside
airbench94 on the same data and the same GPU.

    python benchmarks/gpu_check.py [--source ARCHIVE] [--root DIR] [--images 200000] [--out FILE]
    python benchmarks/gpu_check.py --small --source FOLDER   # reduced CPU mode (the test suite runs it)

In one process tree it:
1. ingests CIFAR-10 (``--source``, default ``../shared/data/cifar10-jpeg.tar.gz``) and a
   bulk dataset of ``--images`` test images (the 10,000 repeated) in partitions of
   ``--partition-size``;
2. starts the cluster exactly as ``batchml`` does (``batchml.cluster.connect``: dask-cuda,
   one worker per GPU, ``--require-gpu`` unless ``--small``);
3. trains the fast net as a Dask task on a GPU worker (``batchml.train.training.train``; 49,000
   training images, 1,000 held out) and reads its card: test accuracy, training seconds,
   the compile share (first epoch less the median other epoch), the device;
4. scores the test set once (warm-up: model load and compile, as on a running cluster),
   then the bulk dataset end to end (read Parquet, decode, predict, write predictions and
   statistics, commit), and reads the run manifest's device;
5. measures the bare model's ``predict_on_batch`` on in-memory pixels, as a task on the
   same worker (same process, same GPU), at several batch sizes: the best;
6. reads ``nvidia-smi``: processes and memory per GPU, while the workers hold their models;
7. closes the cluster and runs airbench94 (the ``airbench`` package from PyPI, PyTorch) on
   the same decoded JPEG copy of CIFAR-10 on the same GPU: one warm-up run, then
   ``--airbench-runs`` timed runs (training wall time with CUDA synchronised; test accuracy
   with its flip-translate test-time augmentation).

The last line is one JSON object (also written to ``--out``) with ``worker_device``,
``processes_per_gpu``, ``train_seconds``, ``compile_seconds``, ``test_accuracy``,
``airbench_train_seconds``, ``airbench_test_accuracy``, ``score_images``,
``score_images_per_s``, ``bare_images_per_s``, ``score_to_bare``, ``card_device_name``,
``manifest_device_names`` and ``targets`` (each target and whether it was met).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from batchml import layout
from batchml.cli import cifar10_source
from batchml.cluster import TRAIN_GPU_SHARE, ClusterConfig, connect, gpu_resources
from batchml.data import datasets
from batchml.data.images import Preprocessing, decode_images
from batchml.data.ingest import ingest, write_dataset
from batchml.data.sources import Source, SourceImage
from batchml.errors import BatchmlError
from batchml.score.scoring import ScoreConfig, score, worker_model
from batchml.store import Store, StoreConfig
from batchml.train.training import TrainConfig, train

# the fast net's GPU settings measured best on an H100 (0.9211 test accuracy, 22.5 s)
GPU_NET = {"epochs": 24, "width": 96, "batch_size": 1024, "learning_rate": 1.5, "momentum": 0.85,
           "weight_decay": 0.009, "activation": "gelu", "tta": "flip-translate"}
SMALL_NET = {"epochs": 1, "width": 8, "batch_size": 32}
BARE_BATCHES = (1024, 4096, 8192)
AIRBENCH_TIMEOUT = 600  # seconds for its warm-up and timed runs (about 5 s each on an A100)


# -- data -----------------------------------------------------------------------------------


def prepare(store: Store, source: str, images: int, partition_size: int) -> tuple[str, int]:
    """Ingest both splits and a bulk dataset of ``images`` test images; returns its name and size."""
    for split in ("train", "test"):
        ingest(store, source, f"cifar10-{split}", split, verbose=False)
    manifest = datasets.read_manifest(store, "cifar10-test")
    test = [row for p in manifest.partitions
            for row in datasets.read_partition(store, "cifar10-test", p["name"]).to_pylist()]
    copies = max(1, -(-images // len(test)))
    name = f"bulk-{copies}x-{partition_size}"
    if not store.exists(layout.dataset_path(name, layout.DATASET_MANIFEST)):
        rows = (SourceImage(f"{t['image_id']}#{c}", t["image"], t["label"]) for c in range(copies) for t in test)
        write_dataset(store, Source(f"CIFAR-10 test x{copies}", manifest.classes, rows), name, "test",
                      partition_size, verbose=False)
    return name, copies * len(test)


# -- on the worker --------------------------------------------------------------------------


def bare_predict_task(store_cfg: StoreConfig, model: str, dataset: str, limit: int) -> dict:
    """Images/s of the registered model's ``predict_on_batch`` on in-memory uint8 pixels, in
    this worker process (its GPU), at each of ``BARE_BATCHES``: the median of three passes."""
    from batchml.device import device_lock
    from batchml.registry import ModelVersion

    store = Store(store_cfg)
    blobs = []
    for part in datasets.read_manifest(store, dataset).partitions:
        blobs += datasets.read_partition(store, dataset, part["name"])["image"].to_pylist()
        if len(blobs) >= limit:
            break
    x, _, _ = decode_images(blobs[:limit], Preprocessing())
    net = worker_model(store_cfg, ModelVersion.parse(model))
    rates = {}
    with device_lock():
        for batch in [b for b in BARE_BATCHES if b <= len(x)] or [len(x)]:
            np.asarray(net.predict_on_batch(x[:batch]))  # compile this shape
            passes = []
            for _ in range(3):
                started = time.perf_counter()
                for i in range(0, len(x) - batch + 1, batch):  # whole batches: one compiled shape
                    np.asarray(net.predict_on_batch(x[i: i + batch]))
                passes.append((len(x) // batch * batch) / (time.perf_counter() - started))
            rates[batch] = float(np.median(passes))
    return rates


def framework_devices() -> int:
    """How many devices the worker's framework sees (1: it owns one GPU, or the CPU)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return len(jax.devices())
    return 1


# -- GPU processes --------------------------------------------------------------------------


def nvidia_smi(query: str, kind: str) -> list[list[str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"nvidia-smi --query-{kind} failed: {exc}", flush=True)
        return []
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def gpu_processes(worker_pids: dict[str, int]) -> dict:
    """Per GPU: its name, memory used, and the compute processes on it (pid, MiB, whose)."""
    gpus = {uuid: {"index": int(i), "name": name, "memory_used_mb": float(used), "memory_total_mb": float(total),
                   "processes": []}
            for i, uuid, name, used, total in nvidia_smi("index,uuid,name,memory.used,memory.total", "gpu")}
    owner = {pid: addr for addr, pid in worker_pids.items()}
    for uuid, pid, used in nvidia_smi("gpu_uuid,pid,used_memory", "compute-apps"):
        if uuid in gpus:
            gpus[uuid]["processes"].append({"pid": int(pid), "memory_mb": float(used),
                                            "worker": owner.get(int(pid), "not a batchml worker")})
    return {g.pop("index"): g for g in gpus.values()}


# -- airbench94 -----------------------------------------------------------------------------


def write_arrays(store: Store, folder: Path) -> None:
    """The same decoded JPEG copy of CIFAR-10 that batchml trains on, for airbench."""
    for split in ("train", "test"):
        x, y, _, _ = datasets.load_labelled(store, f"cifar10-{split}", Preprocessing())
        np.savez(folder / f"{split}.npz", images=x, labels=y,
                 classes=np.array(datasets.read_manifest(store, f"cifar10-{split}").classes))


def run_airbench(folder: Path, runs: int) -> dict:
    """airbench94 in a child process (PyTorch; our workers are gone by then)."""
    try:
        out = subprocess.run([sys.executable, __file__, "--airbench-child", str(folder), "--airbench-runs",
                              str(runs)], stdout=subprocess.PIPE, text=True, timeout=AIRBENCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"airbench_error": f"airbench did not finish within {AIRBENCH_TIMEOUT}s"}
    *said, last = out.stdout.strip().splitlines() or ["{}"]
    print("\n".join(said), flush=True)
    if out.returncode:
        return {"airbench_error": f"airbench exited {out.returncode}"}
    return json.loads(last)


def airbench_child(folder: Path, runs: int) -> dict:
    import airbench
    import torch

    data = folder / "cifar10"
    data.mkdir(exist_ok=True)
    for split in ("train", "test"):
        arrays = np.load(folder / f"{split}.npz")
        torch.save({"images": torch.tensor(arrays["images"]), "labels": torch.tensor(arrays["labels"]),
                    "classes": [str(c) for c in arrays["classes"]]}, data / f"{split}.pt")
    os.chdir(folder)  # airbench reads its test set from ./cifar10
    hyp = airbench.lib_airbench94.hyp

    def loader():
        return airbench.CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                                    altflip=True)

    test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    airbench.train94(loader(), verbose=False)  # warm-up: cuDNN's autotuning, not counted
    seconds, accuracy = [], []
    for run in range(runs):
        batches = loader()  # pixels on the GPU before the clock starts, as airbench times itself
        torch.cuda.synchronize()
        started = time.perf_counter()
        model = airbench.train94(batches, verbose=False)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        accuracy.append(airbench.evaluate(model, test, tta_level=hyp["net"]["tta_level"]))
        print(f"airbench94 run {run + 1}: test accuracy {accuracy[-1]:.4f} in {seconds[-1]:.2f}s", flush=True)
    return {"airbench_train_seconds": round(float(np.median(seconds)), 2),
            "airbench_test_accuracy": round(float(np.median(accuracy)), 4),
            "airbench_runs": [{"seconds": round(s, 2), "test_accuracy": round(a, 4)}
                              for s, a in zip(seconds, accuracy, strict=True)],
            "airbench_device": torch.cuda.get_device_name(0), "torch_version": torch.__version__}


def airbench_ready() -> str | None:
    """Why airbench cannot run here, or None."""
    try:
        import airbench  # noqa: F401
        import torch
    except ImportError as exc:
        return f"not installed ({exc.name}): pip install airbench torch torchvision"
    return None if torch.cuda.is_available() else "airbench needs a CUDA GPU"


# -- the check ------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> dict:
    store = Store(StoreConfig(args.root))
    started = time.perf_counter()
    bulk, n_bulk = prepare(store, args.source, args.images, args.partition_size)
    print(f"data: CIFAR-10 from {args.source} and {n_bulk:,} images to score ({bulk}) ready in "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    net = {k: getattr(args, k) for k in GPU_NET}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    with connect(ClusterConfig(require_gpu=not args.small), verbose=True) as client:
        held_out = 0.1 if args.small else 0.02  # 1,000 of CIFAR-10's 50,000; enough to hold some of tiny data
        mv, card = train(client, store, TrainConfig("cifar10-train", "cifar10-test", name="gpu-check", arch="fast",
                                                    validation_fraction=held_out, **net), verbose=True)
        t = card.training
        epochs = t["epoch_seconds"]
        compile_s = max(0.0, epochs[0] - float(np.median(epochs[1:]))) if len(epochs) > 1 else 0.0
        print(f"trained {mv} on {card.device['device_name']} ({t['backend']}): test accuracy "
              f"{card.test_accuracy:.4f} in {card.training_seconds:.1f}s ({compile_s:.1f}s of it compiling, "
              f"estimated)", flush=True)

        score(client, store, ScoreConfig("cifar10-test", model=str(mv), run_id=f"gpu-check-warmup-{stamp}"),
              verbose=False)
        began = time.perf_counter()
        manifest = score(client, store, ScoreConfig(bulk, model=str(mv), run_id=f"gpu-check-{stamp}"), verbose=True)
        rate = manifest.rows / (time.perf_counter() - began)
        bare = client.submit(bare_predict_task, store.config, str(mv), bulk, args.bare_images, pure=False,
                             resources=gpu_resources(client, TRAIN_GPU_SHARE)).result()
        pids = client.run(os.getpid)
        seen = client.run(framework_devices)
        gpus = gpu_processes(pids)
    best = max(bare, key=bare.get)
    print(f"scoring: {manifest.rows:,} images end to end at {rate:,.0f} images/s; bare predict "
          f"{bare[best]:,.0f} images/s at batch {best} ({', '.join(f'{b}: {v:,.0f}' for b, v in bare.items())}); "
          f"ratio {rate / bare[best]:.3f}", flush=True)
    for index, g in sorted(gpus.items()):
        print(f"GPU {index} {g['name']}: {g['memory_used_mb']:,.0f} of {g['memory_total_mb']:,.0f} MiB used; "
              f"processes {[(p['pid'], p['memory_mb'], p['worker']) for p in g['processes']]}", flush=True)

    why_not = airbench_ready()
    airbench = {"airbench_skipped": why_not} if why_not or not args.airbench_runs else None
    if airbench is None:
        with tempfile.TemporaryDirectory() as tmp:
            write_arrays(store, Path(tmp))
            airbench = run_airbench(Path(tmp), args.airbench_runs)
    figures = {
        "worker_device": card.device, "workers": len(pids), "framework_devices_per_worker": sorted(seen.values()),
        "processes_per_gpu": {i: len(g["processes"]) for i, g in gpus.items()},
        "gpus": gpus,
        "train_seconds": card.training_seconds, "compile_seconds": round(compile_s, 1),
        "train_seconds_after_compile": round(card.training_seconds - compile_s, 1), "epoch_seconds": epochs,
        "test_accuracy": round(card.test_accuracy, 4), "net": net,
        "score_images": manifest.rows, "score_images_per_s": round(rate, 1),
        "score_partitions": len(manifest.partitions), "score_batch_sizes": manifest.batch_sizes_used,
        "bare_images_per_s": round(bare[best], 1), "bare_batch_size": best,
        "bare_by_batch": {b: round(v, 1) for b, v in bare.items()}, "score_to_bare": round(rate / bare[best], 3),
        "card_device_name": t["device"]["device_name"],
        "manifest_device_names": sorted({d["device_name"] for d in manifest.devices}),
        **airbench,
    }
    figures["targets"] = targets(figures)
    return figures


def targets(f: dict) -> dict:
    """The issue's targets, each with whether this run met it (None: not measured)."""
    ab_acc, ab_s = f.get("airbench_test_accuracy"), f.get("airbench_train_seconds")
    return {
        "one_process_per_gpu": all(n == 1 for n in f["processes_per_gpu"].values()) if f["gpus"] else None,
        "accuracy_within_0.5_points_of_airbench94": None if ab_acc is None else f["test_accuracy"] >= ab_acc - 0.005,
        "train_time_at_most_3x_airbench94": None if ab_s is None else f["train_seconds_after_compile"] <= 3 * ab_s,
        "score_at_least_0.8x_bare": f["score_to_bare"] >= 0.8,
        "card_and_manifest_name_the_gpu": f["worker_device"]["device"] == "gpu"
        and f["manifest_device_names"] == [f["card_device_name"]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="CIFAR-10 archive or class folders (default ../shared/data/...)")
    parser.add_argument("--root", default=str(Path(__file__).parent / "out" / "gpu-check-store"))
    parser.add_argument("--images", type=int, help="images to score (default 200,000; --small 600)")
    parser.add_argument("--partition-size", type=int, help="images per bulk partition (default 10,000; --small 200)")
    parser.add_argument("--bare-images", type=int, default=50_000, help="images in the bare predict's passes")
    for name, value in GPU_NET.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), help=f"fast net (GPU default {value})")
    parser.add_argument("--airbench-runs", type=int, default=3, help="timed airbench94 runs after a warm-up (0: none)")
    parser.add_argument("--small", action="store_true", help="reduced CPU mode: tiny net and data, no GPU required")
    parser.add_argument("--out", help="also write the JSON figures to this file")
    parser.add_argument("--airbench-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.airbench_child:
        print(json.dumps(airbench_child(Path(args.airbench_child), args.airbench_runs)))
        return 0
    defaults = {**GPU_NET, **(SMALL_NET if args.small else {}),
                "images": 600 if args.small else 200_000, "partition_size": 200 if args.small else 10_000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.small:
        args.bare_images = min(args.bare_images, 2048)
    args.source = args.source or cifar10_source()
    try:
        figures = check(args)
    except BatchmlError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    line = json.dumps(figures)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(f"targets: {figures['targets']}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
