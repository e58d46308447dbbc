import subprocess
import sys
from pathlib import Path

import pytest

from batchml.data.ingest import ingest
from tests.conftest import CLASSES, copy_store, make_image

NIGHTLY = Path(__file__).resolve().parents[1] / "jobs" / "nightly.py"


def nightly(store, *args: str, client=None) -> subprocess.CompletedProcess:
    """The job in a process of its own; on the tests' cluster where ``client`` is given (as a job
    submitted to an existing cluster: a local one per run would add its start-up to each)."""
    cluster = ("--scheduler", client.scheduler.address) if client is not None else ()
    return subprocess.run([sys.executable, str(NIGHTLY), "--root", store.config.root, "--model", "shapes/production",
                           "-q", *cluster, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_nightly_job_scores_monitors_and_exits_1_on_an_error_alert(trained_store, client, tmp_path):
    store = copy_store(trained_store, tmp_path / "store")
    ok = nightly(store, "--dataset", "shapes-test")  # on a local cluster of its own
    assert ok.returncode == 0, ok.stderr
    assert "run nightly-shapes-test: 60 predictions" in ok.stdout and "no alerts" in ok.stdout

    # a night whose labels disagree with the model: every circle filed under 'square'
    night = tmp_path / "night" / "test" / "square"
    night.mkdir(parents=True)
    for i in range(40):
        (night / f"{i}.png").write_bytes(make_image(0, 1000 + i))
    ingest(store, str(tmp_path / "night"), "mislabelled", "test", classes=CLASSES, verbose=False)
    bad = nightly(store, "--dataset", "mislabelled", client=client)
    assert bad.returncode == 1
    assert "ERROR: accuracy" in bad.stdout


@pytest.mark.slow
def test_nightly_job_fails_loudly_on_bad_input(trained_store, tmp_path):
    store = copy_store(trained_store, tmp_path / "store")
    proc = nightly(store, "--dataset", "no-such-night")
    assert proc.returncode == 2 and "unknown dataset 'no-such-night'" in proc.stderr


@pytest.mark.slow
def test_nightly_job_scores_the_days_new_files_without_an_ingest(trained_store, image_folders, client, tmp_path):
    store = copy_store(trained_store, tmp_path / "store")
    incoming = tmp_path / "incoming" / "2026-11-25"
    incoming.mkdir(parents=True)
    for i, png in enumerate(sorted((image_folders / "test").rglob("*.png"))[:30]):
        (incoming / f"{i:03d}.png").write_bytes(png.read_bytes())
    proc = nightly(store, "--images", str(tmp_path / "incoming" / "{date}"), "--date", "2026-11-25", client=client)
    assert proc.returncode == 0, proc.stderr
    assert "run nightly-images-2026-11-25: 30 predictions" in proc.stdout
    missing = nightly(store, "--images", str(tmp_path / "incoming" / "{date}"), "--date", "2026-11-26")
    assert missing.returncode == 2 and "2026-11-26" in missing.stderr


def load_job():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nightly", NIGHTLY)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_nightly_exits_2_with_the_traceback_on_an_unexpected_exception(monkeypatch, capsys):
    job = load_job()

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(job, "open_store", broken)
    assert job.main(["--dataset", "night"]) == 2  # a failure, not an error alert (1)
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err


def test_nightly_passes_the_partition_size_and_the_nights_date_to_the_run(monkeypatch, tmp_path):
    import contextlib

    job, seen = load_job(), {}

    def score_and_monitor(open_client, store, cfg, thresholds, config_source, verbose):
        seen["cfg"] = cfg
        raise job.BatchmlError("stop here")

    monkeypatch.setattr(job, "connect", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(job, "score_and_monitor", score_and_monitor)
    args = ["--images", str(tmp_path / "{date}"), "--date", "2026-11-25", "--partition-size", "7", "--root",
            str(tmp_path / "store"), "--segment-from-path", "{camera}/**", "--raw-orientation"]
    assert job.main(args) == 2
    cfg = seen["cfg"]
    assert (cfg.partition_size, cfg.run_id) == (7, "nightly-images-2026-11-25")
    assert cfg.images == str(tmp_path / "2026-11-25")
    # the nightly job segments as `score` does: the alerts of its nights name the camera
    assert (cfg.segment_from_path, cfg.segment_by, cfg.raw_orientation) == ("{camera}/**", None, True)


def test_a_night_that_is_not_a_date_exits_2_naming_the_flag_and_the_form(tmp_path, capsys):
    assert load_job().main(["--dataset", "night-{date}", "--date", "yesterday", "--root", str(tmp_path)]) == 2
    assert "--date 'yesterday' is not a date: use YYYY-MM-DD" in capsys.readouterr().err
