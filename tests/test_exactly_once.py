"""Exactly-once scoring against failures: a real `dask scheduler` and `dask worker` processes
on 127.0.0.1 with a worker killed mid-run, and an S3 endpoint that goes down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from batchml.data.ingest import ingest
from batchml.errors import BatchmlError
from batchml.score.scoring import ScoreConfig, score
from batchml.store import Store, StoreConfig
from tests.conftest import (
    CLASSES,
    FaultyS3Proxy,
    TcpProxy,
    copy_store,
    free_port,
    make_image,
    s3_options,
    stop_processes,
    wait_for_port,
    write_class_folders,
)

pytestmark = pytest.mark.slow
MODEL = "shapes/production"


@pytest.fixture(scope="module")
def dask_cli_cluster():
    """`dask scheduler` and two `dask worker` processes, as a data engineer starts them."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    assert wait_for_port(port), "dask scheduler did not start"
    address = f"tcp://127.0.0.1:{port}"
    procs += [subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "2", "--no-dashboard",
                                "--name", f"w{i}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for i in range(2)]
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=60)
        yield address, client
    stop_processes(procs)


@pytest.fixture
def big_store(trained_store, tmp_path):
    """The trained model and a dataset of 8 partitions of 400 images: long enough to kill a worker in."""
    store = copy_store(trained_store, tmp_path / "store")
    write_class_folders(tmp_path / "big", {"test": 1067})
    ingest(store, str(tmp_path / "big"), "big", "test", partition_size=400, verbose=False)
    return store


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(dask_cli_cluster, big_store):
    address, client = dask_cli_cluster
    job = subprocess.Popen([sys.executable, "-m", "batchml", "score", "--scheduler", address, "--dataset", "big",
                            "--model", MODEL, "--run-id", "killed", "--root", big_store.config.root, "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stats = big_store.path("runs/killed/stats")
    deadline = time.monotonic() + 300
    while not (os.path.isdir(stats) and os.listdir(stats)) and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = next(iter(client.run(os.getpid).values()))
    os.kill(victim, signal.SIGKILL)  # a worker dies with partitions in flight
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err
    preds = pd.read_parquet(big_store.path("runs/killed/predictions"))
    assert len(preds) == 3201 and preds.image_id.is_unique
    assert sorted(os.listdir(stats)) == [f"part-{i:05d}.json" for i in range(9)]
    assert big_store.read_json("runs/killed/manifest.json")["rows"] == 3201
    client.wait_for_workers(2, timeout=120)  # the nanny brought the worker back

    again = subprocess.run([sys.executable, "-m", "batchml", "score", "--scheduler", address, "--dataset", "big",
                            "--model", MODEL, "--run-id", "killed", "--root", big_store.config.root],
                           capture_output=True, text=True, timeout=300)
    assert "already committed" in again.stdout


def test_a_job_killed_mid_run_commits_nothing_and_its_rerun_finishes_the_rest(dask_cli_cluster, big_store):
    address, _ = dask_cli_cluster
    command = [sys.executable, "-m", "batchml", "score", "--scheduler", address, "--dataset", "big", "--model",
               MODEL, "--run-id", "cut", "--root", big_store.config.root, "-q"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = big_store.path("runs/cut/stats")
    deadline = time.monotonic() + 300
    while not (os.path.isdir(stats) and os.listdir(stats)) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.kill()  # SIGKILL: the nightly job dies with partitions in flight
    job.wait()
    time.sleep(2)  # the scheduler notices the client is gone and drops its tasks
    assert not big_store.exists("runs/cut/manifest.json")
    before = {n: os.stat(os.path.join(stats, n)).st_mtime_ns for n in os.listdir(stats) if not n.startswith(".tmp-")}
    assert 0 < len(before) < 9
    with open(os.path.join(stats, ".tmp-0dead-part-00008.json"), "w") as f:  # as a writer killed mid-write leaves
        f.write('{"rows": ')

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    after = {n: os.stat(os.path.join(stats, n)).st_mtime_ns for n in os.listdir(stats)}
    assert len(after) == 9 and all(after[n] == t for n, t in before.items())  # only the missing ones ran
    preds = pd.read_parquet(big_store.path("runs/cut/predictions"))
    assert len(preds) == 3201 and preds.image_id.is_unique


def test_a_store_outage_fails_loudly_and_commits_nothing(client, trained_store, s3_endpoint, tmp_path):
    import boto3

    proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1])).start()
    bucket = f"outage-{os.getpid()}-{int(time.time())}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    options = {**s3_options(f"http://127.0.0.1:{proxy.port}"),
               "config_kwargs": {"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 2}}}
    store = Store(StoreConfig(f"s3://{bucket}/store", options))
    store.fs.put(trained_store.config.root + "/", store.path(""), recursive=True)
    score(client, store, ScoreConfig("shapes-test", MODEL, "night"), verbose=False)
    for rel in ("manifest.json", "stats/part-00002.json"):  # as if the job had died mid-run
        store.delete(f"runs/night/{rel}")

    proxy.stop()  # the endpoint goes down
    started = time.monotonic()
    with pytest.raises(BatchmlError, match="endpoint is up"):
        score(client, store, ScoreConfig("shapes-test", MODEL, "night"), verbose=False)
    assert time.monotonic() - started < 120  # bounded retries, not a hang

    proxy.start()  # back up: nothing was committed, and a rerun finishes the run exactly once
    assert not store.exists("runs/night/manifest.json")
    m = score(client, store, ScoreConfig("shapes-test", MODEL, "night"), verbose=False)
    preds = pd.read_parquet(store.url("runs/night/predictions"), storage_options=options)
    assert m.rows == len(preds) == 60 and preds.image_id.is_unique
    proxy.stop()


def test_a_file_that_cannot_be_read_now_fails_its_partition_and_a_rerun_scores_it(client, trained_store, s3_endpoint):
    from urllib.parse import urlsplit

    import boto3

    broken = {"on": True}  # every GET of one image answers 503, until the storage recovers
    proxy = FaultyS3Proxy(s3_endpoint, fail=lambda method, path: "503" if broken["on"] and method == "GET" and
                          urlsplit(path).path.endswith("/in/square/001.png") else None).start()
    bucket = f"flaky-{os.getpid()}-{int(time.time())}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    options = {**s3_options(proxy.endpoint), "config_kwargs": {"retries": {"max_attempts": 1}}}
    store = Store(StoreConfig(f"s3://{bucket}/store", options))
    store.fs.put(trained_store.config.root + "/", store.path(""), recursive=True)
    for label, name in enumerate(CLASSES):
        for i in range(3):
            store.fs.pipe_file(f"{bucket}/in/{name}/{i:03d}.png", make_image(label, 100 * label + i))
    cfg = ScoreConfig(None, MODEL, "flaky", images=f"s3://{bucket}/in", partition_size=3, max_error_ratio=1.0)

    with pytest.raises(BatchmlError, match=r"could not read 1 file.*square/001.png.*rerun the same --run-id"):
        score(client, store, cfg, verbose=False)
    assert not store.exists("runs/flaky/manifest.json") and not store.list("runs/flaky/errors")

    broken["on"] = False
    m = score(client, store, cfg, verbose=False)
    assert (m.rows, m.errors) == (9, 0)
    preds = pd.read_parquet(store.url("runs/flaky/predictions"), storage_options=options)
    assert len(preds) == 9 and preds.image_id.is_unique
    proxy.stop()
