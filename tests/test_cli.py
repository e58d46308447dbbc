"""The command line end to end, as users run it: a local folder store and s3:// on moto."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import uuid

import duckdb
import numpy as np
import pandas as pd
import pytest

from batchml.cli import main
from tests.conftest import s3_options


def batchml(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "batchml", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"batchml {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A store URL and the environment that reaches it."""
    if request.param == "local":
        return str(tmp_path / "store"), {}
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"cli-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store", {"AWS_ENDPOINT_URL": endpoint}


def upload(archive, prefix: str, env: dict) -> None:
    """The test split of a class-folder archive as loose files under ``prefix``."""
    import fsspec

    opts = s3_options(env["AWS_ENDPOINT_URL"]) if prefix.startswith("s3://") else {"auto_mkdir": True}
    fs, root = fsspec.core.url_to_fs(prefix, **opts)
    with tarfile.open(archive) as tar:
        for m in tar:
            if m.isfile() and m.name.startswith("test/"):
                fs.pipe_file(f"{root}/{m.name.removeprefix('test/')}", tar.extractfile(m).read())


def read_predictions(url: str, env: dict) -> pd.DataFrame:
    opts = s3_options(env["AWS_ENDPOINT_URL"]) if url.startswith("s3://") else None
    return pd.read_parquet(url, storage_options=opts)


@pytest.mark.slow
def test_every_verb_end_to_end(root, cifar_slice):
    url, env = root
    r = ["--root", url]
    out = batchml("ingest", str(cifar_slice), "--dataset", "c-train", *r, env=env).stdout
    assert "200 images in 1 partitions" in out
    batchml("ingest", str(cifar_slice), "--dataset", "c-test", "--split", "test", "--partition-size", "40", *r, env=env)
    again = batchml("ingest", str(cifar_slice), "--dataset", "c-test", "--split", "test", "--partition-size", "40",
                    *r, env=env).stdout
    assert "nothing changed" in again

    out = batchml("train", "--dataset", "c-train", "--test-dataset", "c-test", "--epochs", "1", "--promote",
                  *r, env=env).stdout
    assert "registered cifar10/v1" in out and "production -> cifar10/v1" in out
    listing = batchml("models", "list", *r, env=env).stdout
    assert re.search(r"cifar10/v1\s+tutorial .* production", listing)
    assert '"version": "v1"' in batchml("models", "show", "production", *r, env=env).stdout
    assert "staging -> cifar10/v1" in batchml("models", "promote", "v1", "--alias", "staging", *r, env=env).stdout

    scored = batchml("score", "--dataset", "c-test", "--run-id", "night-1", "--workers", "2", *r, env=env)
    assert "run night-1 committed: 100 predictions" in scored.stdout and "on cpu (tensorflow)" in scored.stdout
    assert "cluster: 2 worker(s): cpu (tensorflow) x 2; Dask dashboard http://" in scored.stderr
    assert "oneDNN" not in scored.stderr and "absl::InitializeLog" not in scored.stderr  # quiet workers
    rerun = batchml("score", "--dataset", "c-test", "--run-id", "night-1", *r, env=env)
    assert "already committed" in rerun.stdout and "cluster:" not in rerun.stderr  # answered without one

    raw = f"{url}/incoming"  # raw files under a prefix, scored without an ingest
    upload(cifar_slice, raw, env)
    out = batchml("score", "--images", raw, "--partition-size", "30", "--run-id", "raw-1", *r, env=env).stdout
    assert "run raw-1 committed: 100 predictions" in out
    raw_preds = read_predictions(f"{url}/runs/raw-1/predictions", env)
    assert raw_preds.label.notna().all() and raw_preds.partition.nunique() == 4

    report = batchml("monitor", "--run-id", "night-1", *r, env=env).stdout
    correct, labelled = map(int, re.search(r"\((\d+)/(\d+) labelled rows correct", report).groups())
    preds = read_predictions(f"{url}/runs/night-1/predictions", env)
    assert len(preds) == 100 and preds.image_id.is_unique
    assert (correct, labelled) == (int((preds.predicted == preds.label).sum()), 100)
    printed = float(re.search(r"accuracy (\d\.\d+)", report).group(1))
    assert printed == pytest.approx(np.mean(preds.predicted == preds.label), abs=5e-5)
    monitoring = read_predictions(f"{url}/monitoring/runs", env)
    assert monitoring.set_index("run_id").loc["night-1", "correct"] == correct
    summary = batchml("monitor", "--since", "2000-01-01", *r, env=env).stdout
    assert f"({correct}/100 labelled rows correct" in summary and "1 runs committed" in summary


@pytest.mark.slow
def test_demo_commits_two_runs_that_duckdb_reads(tmp_path, cifar_slice):
    url = str(tmp_path / "store")
    out = batchml("demo", "--source", str(cifar_slice), "--epochs", "1", "--root", url).stdout
    runs = re.findall(r"demo: night \d \([^)]*\): run (\S+): (\d+) rows", out)
    (_, first), (_, second) = runs
    # half the 100 test images on night 1; night 2 takes only images night 1 did not (a repeat is a duplicate)
    assert int(first) == 50 and 0 < int(second) <= 50
    con = duckdb.connect()
    files = f"'{url}/runs/*/predictions/*.parquet'"
    total = 50 + int(second)
    assert con.execute(f"SELECT count(*), count(DISTINCT run_id), count(DISTINCT image_id) FROM {files}"
                       ).fetchall() == [(total, 2, total)]
    assert f"batchml dashboard --root {url}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["score", "--dataset", "nope"], "unknown dataset 'nope'"),  # named before a cluster starts
        (["monitor", "--run-id", "nope"], "no such run"),
        (["models", "show", "v9"], "no versions of model 'cifar10'"),
        (["ingest", "/no/such/dir", "--dataset", "x"], "does not exist"),
        (["ingest", "cifar10", "--dataset", "bad name!"], "invalid dataset name"),
        (["score", "--dataset", "x", "--storage-options", "{oops"], "not valid JSON"),
        (["score", "--images", "x", "--partition-size", "0"], "'0' is not a whole number of at least 1"),
        (["score", "--dataset", "x", "--batch-size", "-1"], "'-1' is not a whole number of at least 1"),
        (["score", "--dataset", "x", "--threads-per-worker", "-1"], "'-1' is not a whole number of at least 1"),
        (["monitor", "--since", "yesterday"], "--since 'yesterday' is not a date: use YYYY-MM-DD"),
        (["train", "--dataset", "x", "--name", "../x"], "invalid model name '../x'"),
        (["ingest", "cifar10", "--dataset", "x", "--classes", "a,a"], "has an empty or repeated name"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, args, message, capsys):
    """In this process (the console script's exit path is the subprocess tests' above and below)."""
    try:
        code = main([*args, "--root", str(tmp_path / "store")])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_score_submits_to_an_existing_scheduler(client, trained_store, tmp_path):
    from tests.conftest import copy_store

    store = copy_store(trained_store, tmp_path / "store")
    out = batchml("score", "--scheduler", client.scheduler.address, "--dataset", "shapes-test",
                  "--model", "shapes/production", "--run-id", "remote", "--root", store.config.root).stdout
    assert "run remote committed: 60 predictions" in out
    workers = {p["worker"] for p in store.read_json("runs/remote/manifest.json")["partitions"]}
    assert len(workers) >= 1 and all(":" in w for w in workers)


@pytest.mark.slow
def test_sweep_from_the_command_line_records_its_trials_and_registers_the_best(trained_store, client, tmp_path):
    from tests.conftest import copy_store

    store = copy_store(trained_store, tmp_path / "store")
    # on the tests' two-worker cluster, as a sweep submitted to an existing one
    proc = batchml("sweep", "--root", store.config.root, "--dataset", "shapes-train", "--test-dataset", "shapes-test",
                   "--arch", "fast", "--width", "4", "--epochs", "1", "--param", "learning_rate=0.1,0.3",
                   "--param", "batch_size=16,32", "--trials", "3", "--sweep-id", "cli", "--name", "swept",
                   "--scheduler", client.scheduler.address, "--promote", "-q")
    assert "sweep cli: 3 trials" in proc.stdout and "registered swept/v1" in proc.stdout
    assert len(pd.read_parquet(store.path("sweeps/cli/trials.parquet"))) == 3
    shown = batchml("models", "show", "swept/production", "--root", store.config.root).stdout
    assert '"verdict"' in shown and '"learning_rate_used"' in shown
    bad = batchml("sweep", "--root", store.config.root, "--dataset", "shapes-train", "--param", "beta=0.9",
                  check=False)
    assert bad.returncode == 2 and "NAME one of" in bad.stderr


def test_every_training_setting_has_a_flag():
    """``train_config`` maps flags to ``TrainConfig`` fields by name: a renamed flag must not drop a setting."""
    from dataclasses import fields

    from batchml.cli import build_parser, train_config
    from batchml.train.training import TrainConfig

    parser = build_parser()
    train = parser.parse_args(["train", "--dataset", "d", "--momentum", "0.8", "--warm-start", "v1", "--no-ema"])
    assert {f.name for f in fields(TrainConfig)} <= set(vars(train))
    assert train_config(train) == TrainConfig("d", momentum=0.8, warm_start="v1", ema=False)
    sweep = parser.parse_args(["sweep", "--dataset", "d", "--param", "width=4,8"])
    assert {f.name for f in fields(TrainConfig)} - set(vars(sweep)) == {"warm_start"}


def test_an_unexpected_exception_exits_2_with_its_traceback(tmp_path, monkeypatch, capsys):
    import batchml.registry
    from batchml.cli import main

    def broken(store):
        raise RuntimeError("a bug")

    monkeypatch.setattr(batchml.registry, "list_models", broken)
    assert main(["models", "list", "--root", str(tmp_path / "store")]) == 2  # not 1, an error alert
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err and "unexpected error" in err


@pytest.mark.slow
def test_a_local_clusters_dask_dashboard_listens_on_loopback_only(client):
    sockets = client.cluster.scheduler.http_server._sockets.values()
    assert sockets and {s.getsockname()[0] for s in sockets} == {"127.0.0.1"}
    from batchml.cli import build_parser, cluster_config

    args = build_parser().parse_args(["score", "--dataset", "d", "--dask-dashboard-address", "0.0.0.0:8787"])
    assert cluster_config(args).dashboard_address == "0.0.0.0:8787"


@pytest.mark.slow
def test_relative_paths_reach_the_workers_as_the_client_meant_them(client, trained_store, tmp_path):
    """A worker's working directory is not the client's: a relative --root or --images sent as given
    wrote the predictions into another store (the worker's ./store) and failed in the client's."""
    from tests.conftest import copy_store, write_class_folders

    copy_store(trained_store, tmp_path / "store")
    write_class_folders(tmp_path / "raw", {"test": 2})
    proc = subprocess.run([sys.executable, "-m", "batchml", "score", "--scheduler", client.scheduler.address,
                           "--images", "raw/test", "--model", "shapes/production", "--run-id", "rel",
                           "--root", "store", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_parquet(tmp_path / "store" / "runs" / "rel" / "predictions")) == 6
    assert pd.read_json(tmp_path / "store" / "runs" / "rel" / "run.json", typ="series")["dataset"] == \
        str(tmp_path / "raw" / "test")


def test_a_scheduler_without_workers_is_waited_for_then_a_clear_error(tmp_path):
    from distributed import LocalCluster

    from tests.conftest import write_class_folders

    folder = write_class_folders(tmp_path / "raw", {"test": 1})
    with LocalCluster(n_workers=0, dashboard_address=None) as empty:  # as after a scheduler restart
        proc = batchml("score", "--scheduler", empty.scheduler_address, "--images", str(folder), "--root",
                       str(tmp_path / "store"), "-q", env={"BATCHML_WORKER_WAIT_S": "1"}, check=False)
    assert proc.returncode == 2
    assert "has no workers: waiting up to 1 s" in proc.stderr
    assert f"no Dask worker joined the scheduler at {empty.scheduler_address} in 1 s" in proc.stderr
