"""The demo's two nights: a clean sample raises no alert, the one with a class three times as
common raises a class-mix alert (on the test model, through the real score and monitor)."""

from __future__ import annotations

import numpy as np
import pytest

from batchml.data import datasets
from batchml.data.ingest import ingest
from batchml.demo import DemoConfig, make_nights
from batchml.monitoring import monitor_run
from batchml.score.scoring import ScoreConfig, score
from tests.conftest import copy_store, write_class_folders

pytestmark = pytest.mark.slow


def labels_of(store, dataset: str) -> np.ndarray:
    return np.concatenate([datasets.read_partition(store, dataset, p["name"])["label"].to_numpy()
                           for p in datasets.read_manifest(store, dataset).partitions])


def test_the_demos_second_night_alerts_and_its_first_does_not(client, trained_store, tmp_path):
    store = copy_store(trained_store, tmp_path / "store")
    ingest(store, str(write_class_folders(tmp_path / "images", {"test": 200})), "shapes-nights", "test",
           verbose=False)
    cfg = DemoConfig(night_size=300, shifted_class="square", partition_size=100)
    (clean, _), (shifted, what) = make_nights(store, "shapes-nights", "t", cfg)
    assert np.bincount(labels_of(store, clean), minlength=3).min() > 70  # about a third each
    shifted_labels = labels_of(store, shifted)
    assert np.mean(shifted_labels == 1) == pytest.approx(0.9, abs=0.01)  # 3x a third, capped at 90%
    assert "square" in what

    alerts = []
    for night, dataset in enumerate([clean, shifted], start=1):
        score(client, store, ScoreConfig(dataset, model="shapes/production", run_id=f"night-{night}"), verbose=False)
        alerts.append([a.kind for a in monitor_run(store, f"night-{night}").alerts])
    assert alerts[0] == []
    assert any("shift" in kind for kind in alerts[1]), alerts[1]
