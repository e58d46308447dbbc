import subprocess
import sys
from pathlib import Path

import pytest

from batchml.ingest import ingest
from tests.conftest import CLASSES, copy_store, make_image

pytestmark = pytest.mark.slow
NIGHTLY = Path(__file__).resolve().parents[1] / "jobs" / "nightly.py"


def nightly(store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(NIGHTLY), "--root", store.config.root, "--model", "shapes/production",
                           "-q", *args], capture_output=True, text=True, timeout=600)


def test_nightly_job_scores_monitors_and_exits_1_on_an_error_alert(trained_store, tmp_path):
    store = copy_store(trained_store, tmp_path / "store")
    ok = nightly(store, "--dataset", "shapes-test")
    assert ok.returncode == 0, ok.stderr
    assert "run nightly-shapes-test: 60 predictions" in ok.stdout and "no alerts" in ok.stdout

    # a night whose labels disagree with the model: every circle filed under 'square'
    night = tmp_path / "night" / "test" / "square"
    night.mkdir(parents=True)
    for i in range(40):
        (night / f"{i}.png").write_bytes(make_image(0, 1000 + i))
    ingest(store, str(tmp_path / "night"), "mislabelled", "test", classes=CLASSES, verbose=False)
    bad = nightly(store, "--dataset", "mislabelled")
    assert bad.returncode == 1
    assert "ERROR: accuracy" in bad.stdout


def test_nightly_job_fails_loudly_on_bad_input(trained_store, tmp_path):
    store = copy_store(trained_store, tmp_path / "store")
    proc = nightly(store, "--dataset", "no-such-night")
    assert proc.returncode == 2 and "unknown dataset 'no-such-night'" in proc.stderr
