"""Scoring where the images really live: object storage at 0, 20 and 50 ms a request, against a
local folder and a plain single-process loop.

    python benchmarks/object_storage.py [--root benchmarks/out/objstore] [--images 50000] [--rounds 1]

Prepares CIFAR-10 test JPEGs (the 10,000 repeated, every other copy flipped left-right) as single
files in class folders, and the same as an ingested dataset of Parquet partitions. The files are
served over S3 by ``tests/s3_server.py`` (read-only, GET/HEAD/ListObjectsV2 on a bare asyncio
protocol, the objects preloaded into memory; moto answers a few hundred requests a second), which
waits the chosen latency before each answer and counts the requests in flight; the Parquet
dataset sits in a store on a moto server behind the tests' ``FaultyS3Proxy`` delaying each
request as much. Then, alternating within each round, each a
fresh ``batchml`` process timed end to end (start-up included; one local worker):
  images_s3_<ms>    batchml score --images s3://bench/cifar        (store root local)
  dataset_s3_<ms>   batchml score --dataset cifar  --root s3://...  (the store on S3)
  images_local      batchml score --images <the same folder>
  images_local_no_diagnostics   the same with --no-diagnostics (no input health, hashes or
                    novelty: what the plain loop computes, and the run's core statistics)
  dataset_local     batchml score --dataset cifar  (local store)
  plain_loop        one process: read the files, batchml's decoder, predict_on_batch, Parquet
and ``batchml ingest s3://bench/cifar/`` at 20 ms. The last line is one JSON object: `images_per_s`
(system -> figure), `ratio_s3_20ms_to_local`, `ratio_s3_50ms_to_local` (the median of the rounds'
ratios: a round runs the folder and the three S3 runs of ``--images`` one after the other, every
other round in reverse; also round by round, `..._by_round`, and as the ratio of the medians,
`..._of_medians`), `requests_in_flight_median` (at 20 ms, per worker), `ratio_to_plain_loop` (and
`ratio_to_plain_loop_no_diagnostics`), `peak_rss_mb` (the
largest process of a run), `ingest_s3_images_per_s`, and `s3_server_cpu_seconds` (per latency: the
CPU the S3 server took from the cores the run had).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchml import layout  # noqa: E402
from batchml.store import Store, StoreConfig  # noqa: E402

LATENCIES_MS = (0, 20, 50)
BUCKET = "bench"
PLAIN_BATCH = 256
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def prepare(root: Path, n_images: int) -> tuple[Path, Store]:
    """The store (a model, dataset ``cifar``) and ``objects/bench/cifar/<class>/<id>.jpg``."""
    from PIL import Image

    from batchml.cli import cifar10_source
    from batchml.data import datasets
    from batchml.data.ingest import ingest
    from batchml.data.sources import CIFAR10_CLASSES
    from batchml.registry import DEFAULT_ALIAS, promote, resolve

    store = Store(StoreConfig(str(root / "store")))
    objects = root / "objects" / BUCKET / "cifar"
    if not objects.exists():
        ingest(store, cifar10_source(), "cifar10-test", "test", verbose=False)
        manifest = datasets.read_manifest(store, "cifar10-test")
        rows = [r for p in manifest.partitions for r in datasets.read_partition(store, "cifar10-test", p["name"])
                .to_pylist()][:n_images]
        for c in range(max(1, n_images // len(rows))):
            for r in rows:
                data = r["image"]
                if c % 2:
                    buf = io.BytesIO()
                    Image.open(io.BytesIO(data)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, "JPEG",
                                                                                                quality=75)
                    data = buf.getvalue()
                path = objects / manifest.classes[r["label"]] / f"{c:02d}-{r['image_id'].rsplit('/', 1)[-1]}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    if not store.exists(layout.dataset_path("cifar", layout.DATASET_MANIFEST)):
        ingest(store, str(objects), "cifar", "train", classes=list(CIFAR10_CLASSES), verbose=False)
    try:
        resolve(store, DEFAULT_ALIAS)
    except Exception:
        from batchml.cluster import ClusterConfig, connect
        from batchml.train.training import TrainConfig, train

        ingest(store, cifar10_source(), "cifar10-train", "train", verbose=False)
        with connect(ClusterConfig()) as client:
            mv, _ = train(client, store, TrainConfig("cifar10-train", epochs=1), verbose=False)
        promote(store, mv)
    return objects, store


def s3_copy(store: Store, endpoint: str) -> Store:
    """The store's models and dataset ``cifar`` copied into a bucket on ``endpoint`` (moto)."""
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="store")
    remote = Store(StoreConfig("s3://store/root", {"client_kwargs": {"endpoint_url": endpoint}}))
    base = Path(store.config.root)
    for path in [*(base / "models").rglob("*"), *(base / "images" / "cifar").rglob("*")]:
        if path.is_file():
            remote.write_bytes(path.relative_to(base).as_posix(), path.read_bytes())
    return remote


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds of ``command`` and the peak resident memory (MB) of its largest process."""
    started = time.perf_counter()
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - read after the process ends, closed with it
    proc = psutil.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    peak = 0
    while proc.poll() is None:
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, p.memory_info().rss)
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if proc.returncode:
        errors.seek(0)
        raise SystemExit(f"{' '.join(command)} failed: {errors.read().decode()[-2000:]}")
    return seconds, peak / 2**20


def batchml(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchml", *args, "-q", "--workers", "1"] if args[0] == "score" else \
        [sys.executable, "-m", "batchml", *args, "-q"]


def plain_loop(folder: str, out: str) -> None:
    """The comparison: one process, no cluster, no statistics; batchml's decoder and the same model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchml.backend import configure_backend
    from batchml.data.images import Preprocessing, decode_batch
    from batchml.registry import load_model, read_card, resolve

    configure_backend()
    store = Store(StoreConfig(out.rsplit("/runs/", 1)[0]))
    mv = resolve(store, "production")
    model, prep = load_model(store, mv), Preprocessing.from_dict(read_card(store, mv).preprocessing)
    files = sorted(str(p) for p in Path(folder).rglob("*.jpg"))
    os.makedirs(out, exist_ok=True)
    for n, i in enumerate(range(0, len(files), 2000)):
        names = files[i:i + 2000]
        pixels = decode_batch([Path(f).read_bytes() for f in names], prep).pixels
        probs = np.concatenate([np.asarray(model.predict_on_batch(pixels[j:j + PLAIN_BATCH]))
                                for j in range(0, len(pixels), PLAIN_BATCH)])
        pq.write_table(pa.table({"image_id": names, "predicted": probs.argmax(1).astype(np.int16),
                                 "probability": probs.max(1)}), f"{out}/part-{n:05d}.parquet")


def stats(endpoint: str, reset: bool = False) -> dict:
    request = urllib.request.Request(f"{endpoint}/_stats", method="POST" if reset else "GET")
    return json.loads(urllib.request.urlopen(request).read())


class Bench:
    """One timed run of each system, in a fresh process."""

    def __init__(self, out: Path, objects: Path, store: Store, remote: Store, moto: str, env: dict, n: int):
        self.out, self.objects, self.store, self.remote, self.moto, self.env, self.n = \
            out, objects, store, remote, moto, env, n
        self.in_flight: list[float] = []
        self.ingest_rates: list[float] = []
        self.server_cpu: dict[str, list[float]] = {}  # run -> CPU seconds the S3 server spent on it

    def run(self, name: str, ms: int | None, run_id: str) -> tuple[float, float]:
        root = self.store.config.root
        self.store.delete(layout.run_path(run_id), recursive=True)
        if name == "plain_loop":
            return timed([sys.executable, __file__, "--plain-loop", str(self.objects), f"{root}/runs/{run_id}"],
                         self.env)
        if name.startswith("images_local"):
            extra = ["--no-diagnostics"] if name.endswith("no_diagnostics") else []
            return timed(batchml("score", "--root", root, "--images", str(self.objects), "--run-id", run_id, *extra),
                         self.env)
        if name == "dataset_local":
            return timed(batchml("score", "--root", root, "--dataset", "cifar", "--run-id", run_id), self.env)
        if name.startswith("images"):
            return self._images_s3(ms, run_id)
        return self._dataset_s3(ms, run_id)

    def _images_s3(self, ms: int, run_id: str) -> tuple[float, float]:
        from tests.s3_server import serving

        with serving(self.objects.parents[1], ms / 1000, preload=True) as endpoint:
            options = json.dumps({"client_kwargs": {"endpoint_url": endpoint}})
            before = stats(endpoint, reset=True)["cpu_seconds"]
            measured = timed(batchml("score", "--root", self.store.config.root, "--storage-options", options,
                                     "--images", f"s3://{BUCKET}/cifar", "--run-id", run_id), self.env)
            # the server shares this machine's cores with the run it serves: what it took is reported
            self.server_cpu.setdefault(f"images_s3_{ms}ms", []).append(stats(endpoint)["cpu_seconds"] - before)
            if ms == 20:
                self.in_flight.append(stats(endpoint)["in_flight_median"])  # one worker: per worker
        return measured

    def ingest(self, ms: int) -> float:
        """``batchml ingest`` of the objects at ``ms`` a request: images/s."""
        from tests.s3_server import serving

        with serving(self.objects.parents[1], ms / 1000, preload=True) as endpoint:
            options = json.dumps({"client_kwargs": {"endpoint_url": endpoint}})
            shutil.rmtree(self.out / "ingested", ignore_errors=True)
            seconds, _ = timed(batchml("ingest", f"s3://{BUCKET}/cifar/", "--dataset", "feed", "--root",
                                       str(self.out / "ingested"), "--storage-options", options), self.env)
        return self.n / seconds

    def _dataset_s3(self, ms: int, run_id: str) -> tuple[float, float]:
        from tests.conftest import FaultyS3Proxy

        proxy = FaultyS3Proxy(self.moto, fail=lambda method, path: time.sleep(ms / 1000)).start()
        try:
            options = json.dumps({"client_kwargs": {"endpoint_url": proxy.endpoint}})
            self.remote.delete(layout.run_path(run_id), recursive=True)
            return timed(batchml("score", "--root", self.remote.config.root, "--storage-options", options,
                                 "--dataset", "cifar", "--run-id", run_id), self.env)
        finally:
            proxy.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT / "benchmarks" / "out" / "objstore")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--plain-loop", nargs=2, help=argparse.SUPPRESS)  # FOLDER OUT: run the loop here
    args = parser.parse_args()
    if args.plain_loop:
        plain_loop(*args.plain_loop)
        return 0
    from tests.conftest import free_port, wait_for_port

    os.environ.update(CREDENTIALS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    objects, store = prepare(args.root, args.images)
    n = sum(1 for _ in objects.rglob("*.jpg"))
    print(f"{n:,} JPEGs under {objects}; dataset cifar in {store.config.root}")
    moto_port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(moto_port)
    remote = s3_copy(store, f"http://127.0.0.1:{moto_port}")
    bench = Bench(args.root, objects, store, remote, f"http://127.0.0.1:{moto_port}", env, n)
    rates: dict[str, list[float]] = {}
    rss = []
    try:
        for r in range(args.rounds):  # alternating: this machine's speed drifts from minute to minute
            # the folder and the S3 runs of --images side by side, so that their ratio is taken within a
            # few minutes; every other round in reverse, so that a drift up or down favours neither
            runs = [("images_local", None)] + [(f"images_s3_{ms}ms", ms) for ms in LATENCIES_MS]
            runs += [("images_local_no_diagnostics", None), ("plain_loop", None), ("dataset_local", None)]
            runs += [(f"dataset_s3_{ms}ms", ms) for ms in LATENCIES_MS]
            for name, ms in runs[::-1] if r % 2 else runs:
                seconds, peak = bench.run(name, ms, f"{name}-{r}")
                rates.setdefault(name, []).append(n / seconds)
                rss.append(peak)
                print(f"round {r + 1}: {name}: {n / seconds:,.0f} images/s", flush=True)
            bench.ingest_rates.append(bench.ingest(20))
            print(f"round {r + 1}: ingest s3 at 20 ms: {bench.ingest_rates[-1]:,.0f} images/s", flush=True)
    finally:
        moto.terminate()
    in_flight, ingest_rates = bench.in_flight, bench.ingest_rates
    med = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    by_round = {ms: [round(s / loc, 3) for s, loc in zip(rates[f"images_s3_{ms}ms"], rates["images_local"],
                                                         strict=True)] for ms in LATENCIES_MS}
    figures = {
        "images": n, "rounds": args.rounds, "images_per_s": med,
        # the median of the rounds' ratios: each pairs runs minutes apart, where the medians of the
        # rates pair runs up to an hour apart on a machine whose speed drifts by a third
        "ratio_s3_20ms_to_local": round(statistics.median(by_round[20]), 3),
        "ratio_s3_50ms_to_local": round(statistics.median(by_round[50]), 3),
        "ratio_s3_20ms_to_local_of_medians": round(med["images_s3_20ms"] / med["images_local"], 3),
        "ratio_s3_50ms_to_local_of_medians": round(med["images_s3_50ms"] / med["images_local"], 3),
        "requests_in_flight_median": statistics.median(in_flight),
        "ratio_to_plain_loop": round(med["images_local"] / med["plain_loop"], 3),
        "ratio_to_plain_loop_no_diagnostics": round(med["images_local_no_diagnostics"] / med["plain_loop"], 3),
        "peak_rss_mb": round(max(rss), 1),
        "ingest_s3_images_per_s": round(statistics.median(ingest_rates), 1),
        "s3_server_cpu_seconds": {k: round(statistics.median(v), 1) for k, v in bench.server_cpu.items()},
        "ratio_s3_20ms_to_local_by_round": by_round[20],
        "ratio_s3_50ms_to_local_by_round": by_round[50],
    }
    for name, seconds in figures["s3_server_cpu_seconds"].items():
        print(f"{name}: the S3 server itself used {seconds} CPU seconds of this machine's cores")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
