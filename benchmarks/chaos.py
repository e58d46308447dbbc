"""Chaos: nights that must not lose, duplicate or wedge, under the faults of issue 13.

Each seeded round scores ``--images`` PNGs from a moto S3 prefix through a real
``dask scheduler`` with 2 ``dask worker`` processes, with every S3 request passing a
proxy that answers 503 or drops the connection on a share of requests, and:

- kills a worker, then the client, at random points of the run;
- tries to resume with another ``--partition-size`` (must be refused: exit 2), then
  resumes with the original one until the run commits (a transient failure may exit 2);
- registers two model versions at the same instant from two processes;
- scores a batch of bombs, truncated, 16-bit, empty and oddly named files (each must be
  a prediction or an error row) and ingests a truncated tar (must exit 2);
- adds files to the committed prefix: a rerun must refuse, naming them (exit 2), and
  ``--append`` must score each exactly once;
- scores a local folder holding a FIFO (must be skipped with a notice, never opened);
- monitors the run, accepts it and then an older run as the baseline;
- damages a file and deletes another in every store folder (a run's predictions and
  statistics, the monitoring tables, the accepted baselines, a model version, a dataset):
  monitoring must go on with a warning naming the damaged table file, ``batchml doctor``
  must name every one (exit 1), ``--repair`` must score the lost rows again, and once the
  by-hand ones are restored ``doctor`` must find the store whole (exit 0).

It prints a line per round and, last, one JSON object: rows expected, committed, lost and
duplicated, runs wedged (not done within ``--timeout``), wrong exit codes, silent skips (a
change or a damaged file that a command went past without saying so) and the damaged
files ``doctor`` named (of those planted). The bar: 10 rounds of 20,000 images, all zero
but ``damaged_named``, which must equal ``damaged_planted``. The model is a tiny untrained net: correctness of
the plumbing does not depend on its weights.

    python benchmarks/chaos.py [--rounds 10] [--images 20000] [--fault-rate 0.03] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.conftest: moto, proxy, images

from batchml import layout
from tests.conftest import (
    CLASSES,
    FaultyS3Proxy,
    free_port,
    make_image,
    register_at_the_barrier,
    stop_processes,
    wait_for_port,
)

BUCKET = "chaos"
COMMANDS_LOG = Path(__file__).parent / "out" / "chaos-commands.log"  # appended to by every run
PARTITION_SIZES = (400, 500, 800, 1000, 1250)  # drawn per round; a resume tries another
ENV = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "KERAS_BACKEND": "tensorflow"}


# -- the world: moto, the faulty proxy, a Dask cluster, a tiny model ---------------------------


def start_world(fault_rate: float, seed: int) -> dict:
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)]
    assert wait_for_port(port), "moto did not start"
    moto = f"http://127.0.0.1:{port}"
    proxy = FaultyS3Proxy(moto, rate=fault_rate, seed=seed).start()
    sport = free_port()
    procs.append(subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                   str(sport), "--no-dashboard"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=ENV))
    assert wait_for_port(sport), "dask scheduler did not start"
    address = f"tcp://127.0.0.1:{sport}"
    procs += [subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "2",
                                "--no-dashboard", "--name", f"w{i}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV) for i in range(2)]
    from distributed import Client

    client = Client(address, timeout="60s")
    client.wait_for_workers(2, timeout=120)
    return {"moto": moto, "proxy": proxy, "address": address, "client": client, "procs": procs}


def s3(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint},
                             use_listings_cache=False)


def store_config(endpoint: str):
    from batchml.store import StoreConfig

    return StoreConfig(f"s3://{BUCKET}/store", {"client_kwargs": {"endpoint_url": endpoint},
                                                "key": "testing", "secret": "testing"})


def register_tiny_model(endpoint: str) -> None:
    import keras

    from batchml.data.images import Preprocessing
    from batchml.records import ModelCard
    from batchml.registry import model_bytes, promote, register
    from batchml.store import Store

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(len(CLASSES), "softmax")])
    store = Store(store_config(endpoint))
    k = len(CLASSES)
    card = ModelCard.from_dict({"arch": "tiny", "classes": CLASSES, "preprocessing": Preprocessing().to_dict(),
            "calibration": {"temperature": 1.0},
            "metrics": {"validation": {"rows": 30, "accuracy": 0.34, "loss": 1.1,
                                       "confusion": (np.eye(k, dtype=int) * 8 + 1).tolist()}},
            "reference": {"accuracy": 0.34, "predicted_counts": [10] * k}})
    promote(store, register(store, "chaos", model_bytes(model), card))
    register(store, "decoy", model_bytes(model), card)  # a version to damage by hand


def upload_images(fs, n: int) -> None:
    """``n`` labelled PNGs under in/<class>/, written concurrently (s3fs pipes a dict at once)."""
    batch = {}
    for i in range(n):
        batch[f"{BUCKET}/in/{CLASSES[i % 3]}/{i:06d}.png"] = make_image(i % 3, i)
        if len(batch) == 1000 or i == n - 1:
            fs.pipe(batch)
            batch = {}


def odd_files() -> dict[str, bytes]:
    """A night's worst: bombs, cut files, 16-bit and empty images, names that are hard to read."""
    from tests.test_images import _png_claiming

    good = make_image(0, 1)
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(jpeg, "JPEG")
    small = jpeg.getvalue()
    sof = small.index(b"\xff\xc0")
    wide = io.BytesIO()
    Image.fromarray(np.arange(1024, dtype=np.uint16).reshape(32, 32) * 64).save(wide, "PNG")
    return {
        "bomb.png": _png_claiming(20000, 20000),
        "huge.jpg": small[:sof + 5] + (9000).to_bytes(2, "big") * 2 + small[sof + 9:],
        "cut.png": good[: len(good) // 2],
        "empty.png": b"",
        "text.jpg": b"not an image at all",
        "sixteen-bit.png": wide.getvalue(),
        "brackets [1] *.png": good,
        "caf\u00e9 \u5199\u771f.png": good,
        "circle/good.png": good,
    }


# -- one round -----------------------------------------------------------------------------------


def batchml(world: dict, *args: str, timeout: float) -> tuple[int | None, str]:
    """Run the CLI against the store through the faulty proxy; (exit code or None if wedged, stderr)."""
    env = {**ENV, "AWS_ENDPOINT_URL": world["proxy"].endpoint}
    cmd = [sys.executable, "-m", "batchml", *args, "--root", f"s3://{BUCKET}/store", "-q"]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        _logged(args, None, "wedged", timeout)
        return None, "wedged"
    _logged(args, proc.returncode, proc.stderr + (proc.stdout if proc.returncode else ""), time.monotonic() - started)
    return proc.returncode, proc.stderr


def _logged(args: tuple[str, ...], code: int | None, err: str, seconds: float) -> None:
    """Every command, its exit code, time and the last lines it wrote, to find a wrong exit code afterwards."""
    last = " | ".join(line for line in err.strip().splitlines()[-6:] if line.strip())
    COMMANDS_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(COMMANDS_LOG, "a") as log:
        log.write(f"{' '.join(args)} -> {code} in {seconds:.1f} s: {last[:1500]}\n")


def interrupted_run(world: dict, fs, run_id: str, size: int, rng: random.Random, n_parts: int) -> int:
    """Start a run, kill a worker and then the client at random points; the client's exit code."""
    env = {**ENV, "AWS_ENDPOINT_URL": world["proxy"].endpoint}
    job = subprocess.Popen([sys.executable, "-m", "batchml", "score", "--images", f"s3://{BUCKET}/in",
                            "--scheduler", world["address"], "--run-id", run_id, "--partition-size", str(size),
                            "--model", "chaos/production", "--root", f"s3://{BUCKET}/store", "-q"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    stats = f"{BUCKET}/store/{layout.run_path(run_id, 'stats')}"
    for stage, share in (("worker", rng.uniform(0, 0.4)), ("client", rng.uniform(0.4, 0.9))):
        deadline = time.monotonic() + 600
        while job.poll() is None and time.monotonic() < deadline and done(fs, stats) < share * n_parts:
            time.sleep(0.2)
        if job.poll() is not None:
            break
        if stage == "worker":
            victim = rng.choice(list(world["client"].run(os.getpid).values()))
            os.kill(victim, signal.SIGKILL)  # its nanny starts another
        else:
            job.kill()
    return job.wait()


def done(fs, prefix: str) -> int:
    try:
        return len(fs.ls(prefix, refresh=True))
    except FileNotFoundError:
        return 0


def check_rows(fs, run_id: str, expected: set[str]) -> dict:
    import pyarrow.parquet as pq

    def ids(kind: str) -> list[str]:
        files = fs.glob(f"{BUCKET}/store/{layout.run_path(run_id, kind)}/*.parquet")
        return [i for f in files for i in pq.read_table(fs.open(f), columns=["image_id"])["image_id"].to_pylist()]

    got = ids("predictions") + ids("errors")
    return {"expected": len(expected), "committed": len(got), "duplicated": len(got) - len(set(got)),
            "lost": len(expected - set(got)), "unexpected": len(set(got) - expected)}


def registrations(world: dict) -> int:
    """Two registrations at once from two processes; 1 when they shared a version."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    cfg = store_config(world["proxy"].endpoint)
    procs = [ctx.Process(target=register_at_the_barrier, args=(cfg, barrier, tag, 1, out)) for tag in "ab"]
    for p in procs:
        p.start()
    got = [v for _ in procs for v in out.get(timeout=300)]
    for p in procs:
        p.join(60)
    return int(len(set(got)) != 2)


def run_round(world: dict, fs, r: int, n: int, rng: random.Random, timeout: float) -> dict:
    run_id = f"chaos-{r}"
    size = rng.choice(PARTITION_SIZES)
    other = rng.choice([s for s in PARTITION_SIZES if s != size])
    n_parts = -(-n // size)
    wrong = wedged = 0
    code = interrupted_run(world, fs, run_id, size, rng, n_parts)
    wrong += code not in (0, 2, -signal.SIGKILL)
    code, err = batchml(world, "score", "--images", f"s3://{BUCKET}/in", "--scheduler", world["address"], "--run-id",
                        run_id, "--partition-size", str(other), "--model", "chaos/production", timeout=timeout)
    wedged += code is None
    wrong += code != 2 or f"partitions of {size} files" not in err  # committed or not: refused
    for _ in range(5):  # transient faults may fail a resume (exit 2, nothing committed): resume again
        code, err = batchml(world, "score", "--images", f"s3://{BUCKET}/in", "--scheduler", world["address"],
                            "--run-id", run_id, "--partition-size", str(size), "--model", "chaos/production",
                            timeout=timeout)
        wedged += code is None
        if code == 0:
            break
        manifest = f"{BUCKET}/store/{layout.run_path(run_id, layout.RUN_MANIFEST)}"
        wrong += code != 2 or "Traceback" in err or fs.exists(manifest)
    expected = {f"{CLASSES[i % 3]}/{i:06d}.png" for i in range(n)} | LATE
    ops = ops_round(world, fs, r, run_id, size, expected, timeout) if code == 0 else dict(OPS_ZERO)
    rows = check_rows(fs, run_id, expected)
    rows["lost"] += 0 if code == 0 else rows["expected"] - rows["committed"] + rows["duplicated"]
    odd = odd_round(world, fs, r, timeout)
    collisions = registrations(world)
    return {"round": r, "partition_size": size, **rows, "odd_lost": odd["lost"], "odd_duplicated": odd["duplicated"],
            "wedged": wedged + odd["wedged"] + ops["wedged"],
            "wrong_exit_codes": wrong + odd["wrong"] + collisions + ops["wrong"],
            "registration_collisions": collisions, "silent_skips": ops["silent_skips"],
            "damaged_planted": ops["damaged_planted"], "damaged_named": ops["damaged_named"]}


# -- issue 24: grown prefixes, FIFOs, damaged stores --------------------------------------------------

LATE: set[str] = set()  # files added to the prefix by earlier rounds: every later run scores them too
OPS_ZERO = {"wedged": 0, "wrong": 0, "silent_skips": 0, "damaged_planted": 0, "damaged_named": 0}


def retried(world: dict, *args: str, timeout: float, attempts: int = 5, refusal: str = "") -> tuple[int | None, str]:
    """A command that transient faults may fail (exit 2): run again until it exits otherwise, or
    is refused for the reason expected (``refusal`` in its message: running it again changes nothing)."""
    for _ in range(attempts):
        code, err = batchml(world, *args, timeout=timeout)
        if code != 2 or "Traceback" in err or (refusal and refusal in err):
            break
    return code, err


def ops_round(world: dict, fs, r: int, run_id: str, size: int, expected: set[str], timeout: float) -> dict:
    out = dict(OPS_ZERO)
    cluster = ("--scheduler", world["address"])
    score = ("score", "--images", f"s3://{BUCKET}/in", "--run-id", run_id, "--partition-size", str(size),
             "--model", "chaos/production", *cluster)
    late = {f"circle/late-{r}-{i}.png": make_image(0, 10_000 + i) for i in range(5)}
    fs.pipe({f"{BUCKET}/in/{name}": data for name, data in late.items()})
    code, err = retried(world, *score, timeout=timeout, refusal="5 new files")
    out["wedged"] += code is None
    out["silent_skips"] += code == 0  # the late files were left out, and it said all is done
    out["wrong"] += code not in (0, 2) or (code == 2 and "5 new files" not in err)
    code, err = retried(world, *score, "--append", timeout=timeout)
    out["wedged"] += code is None
    out["wrong"] += code != 0
    LATE.update(late)
    expected |= set(late)
    fifo = fifo_round(world, r, timeout)
    for k in fifo:
        out[k] += fifo[k]
    damage = damage_round(world, fs, r, run_id, expected, timeout)
    for k in damage:
        out[k] += damage[k]
    return out


def fifo_round(world: dict, r: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(3):
            Path(tmp, f"{i}.png").write_bytes(make_image(i, i))
        os.mkfifo(Path(tmp, "pipe.png"))  # a reader that opened it would wait for a writer forever
        code, err = batchml(world, "score", "--images", tmp, "--run-id", f"fifo-{r}", "--scheduler", world["address"],
                            "--model", "chaos/production", timeout=min(timeout, 300))
        code, err = (retried(world, "score", "--images", tmp, "--run-id", f"fifo-{r}", "--scheduler",
                             world["address"], "--model", "chaos/production", timeout=min(timeout, 300))
                     if code == 2 else (code, err))
    return {"wedged": int(code is None), "wrong": int(code not in (0, None)),
            "silent_skips": int(code == 0 and "pipe.png" not in err)}


def damage_round(world: dict, fs, r: int, run_id: str, expected: set[str], timeout: float) -> dict:
    """Monitor and accept, then a damaged and a deleted file in every folder of the store: doctor must
    name each, --repair must bring the rows back, and the store must end whole."""
    out = dict(OPS_ZERO)
    root = f"{BUCKET}/store"
    code, _ = retried(world, "monitor", "--run-id", run_id, timeout=timeout)
    out["wrong"] += code not in (0, 1)
    code, err = retried(world, "monitor", "--accept-baseline", run_id, timeout=timeout)
    out["wrong"] += code != 0
    if r:  # an older run accepted after a newer one: the latest acceptance wins, or it is refused
        code, err = retried(world, "monitor", "--accept-baseline", f"chaos-{r - 1}", timeout=timeout)
        out["wrong"] += code not in (0, 2) or "Traceback" in err
    if not fs.exists(f"{root}/{layout.dataset_path('tiny', layout.DATASET_MANIFEST)}"):
        with tempfile.TemporaryDirectory() as tmp:
            for c, name in enumerate(CLASSES):
                Path(tmp, "test", name).mkdir(parents=True)
                for i in range(4):
                    Path(tmp, "test", name, f"{i}.png").write_bytes(make_image(c, i))
            retried(world, "ingest", tmp, "--dataset", "tiny", "--split", "test", "--partition-size", "4",
                    timeout=timeout)
    parts = sorted(fs.ls(f"{root}/{layout.run_path(run_id, 'predictions')}"))
    planted = {  # path relative to the root -> how it was damaged (torn, or deleted)
        layout.run_output(run_id, "predictions", parts[0].rsplit("/", 1)[1]): "torn",
        layout.run_stats(run_id, parts[-1].rsplit("/", 1)[1]): "deleted",
        layout.monitoring_path("runs", run_id): "torn",
        layout.accepted_path(run_id): "torn",
        "models/decoy/v1/card.json": "torn",
        "models/decoy/v1/model.keras": "deleted",
        layout.dataset_path("tiny", "part-00000.parquet"): "torn",
        layout.dataset_path("tiny", "part-00001.parquet"): "deleted",
    }
    kept = {rel: fs.cat(f"{root}/{rel}") for rel in planted}
    for rel, how in planted.items():
        if how == "deleted":
            fs.rm(f"{root}/{rel}")
        else:
            fs.pipe(f"{root}/{rel}", kept[rel][: len(kept[rel]) // 3])
    code, err = retried(world, "monitor", "--run-id", f"fifo-{r}", timeout=timeout)  # reads the torn table file
    out["silent_skips"] += code in (0, 1) and layout.monitoring_path("runs", run_id) not in err
    proc = subprocess.run([sys.executable, "-m", "batchml", "doctor", "--root", f"s3://{BUCKET}/store", "-q"],
                          capture_output=True, text=True, timeout=timeout,
                          env={**ENV, "AWS_ENDPOINT_URL": world["moto"]})  # the check itself: no faults
    named = sum(f"{rel}:" in proc.stdout for rel in planted)
    out["damaged_planted"], out["damaged_named"] = len(planted), named
    out["silent_skips"] += len(planted) - named
    out["wrong"] += proc.returncode != 1
    code, err = retried(world, "doctor", "--repair", *("--scheduler", world["address"]), timeout=timeout)
    out["wedged"] += code is None
    for rel in ("models/decoy/v1/card.json", "models/decoy/v1/model.keras", layout.accepted_path(run_id),
                layout.dataset_path("tiny", "part-00000.parquet"), layout.dataset_path("tiny", "part-00001.parquet")):
        fs.pipe(f"{root}/{rel}", kept[rel])  # what needs a person, restored by hand
    code, err = retried(world, "doctor", "--repair", *("--scheduler", world["address"]), timeout=timeout)
    out["wrong"] += code != 0  # whole again
    return out


def odd_round(world: dict, fs, r: int, timeout: float) -> dict:
    """The odd batch must commit with every file a row; a truncated tar must be refused."""
    files = odd_files()
    fs.pipe({f"{BUCKET}/odd-{r}/{name}": data for name, data in files.items()})
    code, _ = batchml(world, "score", "--images", f"s3://{BUCKET}/odd-{r}", "--scheduler", world["address"],
                      "--run-id", f"odd-{r}", "--partition-size", "4", "--max-error-ratio", "1",
                      "--model", "chaos/production", timeout=timeout)
    for _ in range(3):
        if code != 2:
            break
        code, _ = batchml(world, "score", "--images", f"s3://{BUCKET}/odd-{r}", "--scheduler", world["address"],
                          "--run-id", f"odd-{r}", "--partition-size", "4", "--max-error-ratio", "1",
                          "--model", "chaos/production", timeout=timeout)
    rows = check_rows(fs, f"odd-{r}", set(files))
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "night.tar"
        with tarfile.open(archive, "w") as tar:
            for name, data in list(files.items())[-3:] * 2:
                info = tarfile.TarInfo(f"test/circle/{len(tar.getmembers())}-{Path(name).name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            cut = tar.getmembers()[3].offset
        archive.write_bytes(archive.read_bytes()[:cut])
        tar_code, _ = batchml(world, "ingest", str(archive), "--dataset", f"cut-{r}", "--split", "test",
                              timeout=timeout)
    return {"lost": rows["lost"], "duplicated": rows["duplicated"],
            "wedged": (code is None) + (tar_code is None), "wrong": (code != 0) + (tar_code != 2)}


# -- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--fault-rate", type=float, default=0.03, help="share of S3 requests failed (503 or drop)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a command counts as wedged")
    args = parser.parse_args(argv)
    started = time.monotonic()
    world = start_world(args.fault_rate, args.seed)
    try:
        fs = s3(world["moto"])
        fs.mkdir(BUCKET)
        register_tiny_model(world["moto"])
        upload_images(fs, args.images)
        rounds = []
        for r in range(args.rounds):
            rounds.append(run_round(world, fs, r, args.images, random.Random(args.seed * 1000 + r), args.timeout))
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        world["client"].close()
        world["proxy"].stop()
        stop_processes(world["procs"][1:])
        world["procs"][0].kill()
    total = {k: sum(r[k] for r in rounds) for k in ("expected", "committed", "duplicated", "lost", "odd_lost",
                                                     "odd_duplicated", "wedged", "wrong_exit_codes", "silent_skips",
                                                     "damaged_planted", "damaged_named")}
    summary = {"rounds": len(rounds), "images_per_round": args.images, "rows_expected": total["expected"],
               "rows_committed": total["committed"], "rows_lost": total["lost"] + total["odd_lost"],
               "rows_duplicated": total["duplicated"] + total["odd_duplicated"], "runs_wedged": total["wedged"],
               "wrong_exit_codes": total["wrong_exit_codes"], "silent_skips": total["silent_skips"],
               "damaged_planted": total["damaged_planted"], "damaged_named": total["damaged_named"],
               "s3_requests": dict(world["proxy"].counts), "wall_seconds": round(time.monotonic() - started, 1)}
    print(f"chaos: {summary['rounds']} rounds of {args.images:,} images; rows lost {summary['rows_lost']}, "
          f"duplicated {summary['rows_duplicated']}; runs wedged {summary['runs_wedged']}; wrong exit codes "
          f"{summary['wrong_exit_codes']}; silent skips {summary['silent_skips']}; damaged files named "
          f"{summary['damaged_named']} of {summary['damaged_planted']}; S3 requests {summary['s3_requests']}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
