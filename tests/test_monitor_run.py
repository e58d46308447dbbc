"""Monitoring committed runs end to end: rows, alerts, failure cases, history, date ranges."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from batchml.data.ingest import ingest
from batchml.monitoring import MonitorConfig, monitor_range, monitor_run, read_table
from batchml.monitoring.history import MIN_NIGHTS
from batchml.score.scoring import ScoreConfig, score
from tests.conftest import CLASSES, copy_store, make_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nights(client, trained_store, tmp_path_factory):
    """A store with MIN_NIGHTS + 1 monitored nightly runs of the synthetic test set."""
    store = copy_store(trained_store, tmp_path_factory.mktemp("nights") / "store")
    reports = []
    for night in range(MIN_NIGHTS + 1):
        score(client, store, ScoreConfig("shapes-test", "shapes/production", f"night-{night}"), verbose=False)
        # the very same images each night, as a fixed canary set would be: not a replayed batch here
        reports.append(monitor_run(store, f"night-{night}", MonitorConfig(duplicate_nights=0)))
    return store, reports


def test_the_row_matches_the_predictions(nights):
    store, reports = nights
    preds = pd.read_parquet(store.path("runs/night-0/predictions"))
    row = read_table(store, "runs").set_index("run_id").loc["night-0"]
    assert row["rows"] == len(preds) and row["correct"] == (preds.predicted == preds.label).sum()
    assert row["predicted_counts"].tolist() == np.bincount(preds.predicted, minlength=3).tolist()
    assert row["expected_accuracy"] == pytest.approx(reports[0].row.expected_accuracy)
    assert sum(row["estimated_priors"]) == pytest.approx(1)


def test_history_starts_once_there_are_enough_nights(nights):
    _, reports = nights
    assert reports[MIN_NIGHTS - 1].row.history_p_value is None
    assert reports[MIN_NIGHTS].row.history_nights == MIN_NIGHTS
    assert reports[MIN_NIGHTS].row.history_p_value == pytest.approx(1)  # the very same images each night


def test_failure_snapshot_has_thumbnails_and_class_names(client, trained_store, tmp_path):
    store = copy_store(trained_store, tmp_path / "store")
    night = tmp_path / "night" / "test"
    (night / "square").mkdir(parents=True)
    for i in range(30):  # circles filed under 'square', and unlabelled images
        (night / "square" / f"{i}.png").write_bytes(make_image(0, 2000 + i))
        (night / f"u{i}.png").write_bytes(make_image(i % 3, 3000 + i))
    ingest(store, str(tmp_path / "night"), "odd-night", "test", classes=CLASSES, verbose=False)
    score(client, store, ScoreConfig("odd-night", "shapes/production", "odd"), verbose=False)
    report = monitor_run(store, "odd")
    snap = pd.read_parquet(store.path("monitoring/failures/odd.parquet"))
    wrong, unsure = snap[snap.kind == "misclassified"], snap[snap.kind == "uncertain"]
    assert len(wrong) == min(24, report.row.labelled - report.row.correct) > 0
    assert (wrong.true_class == "square").all() and (wrong.predicted_class != "square").all()
    assert wrong.confidence.is_monotonic_decreasing and unsure.confidence.is_monotonic_increasing
    assert len(unsure) == 24 and unsure.true_class.isna().all()
    assert Image.open(io.BytesIO(wrong.thumbnail.iloc[0])).size == (32, 32)


def test_a_date_range_folds_runs_exactly(nights):
    store, reports = nights
    summary = monitor_range(store, since="2000-01-01")
    assert summary["runs"] == MIN_NIGHTS + 1
    assert summary["correct"] == sum(r.row.correct for r in reports)
    assert summary["confusion"] == (np.sum([r.row.confusion for r in reports], axis=0)).tolist()
    assert summary["accuracy"] == pytest.approx(reports[0].row.accuracy)
    assert summary["cot_accuracy"] is None  # nights of 60 rows, too few for COT: so is the range


def test_a_run_where_every_image_fails_alerts(client, trained_store, tmp_path):
    store = copy_store(trained_store, tmp_path / "store")
    folder = tmp_path / "broken" / "test" / "circle"
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"{i}.png").write_bytes(make_image(0, i)[:50])  # truncated
    ingest(store, str(tmp_path / "broken"), "broken", "test", classes=CLASSES, verbose=False)
    score(client, store, ScoreConfig("broken", "shapes/production", "all-bad", max_error_ratio=1.0), verbose=False)
    report = monitor_run(store, "all-bad")
    assert report.failed and [a.kind for a in report.alerts] == ["no_rows"]


def test_an_accepted_baseline_is_recorded_and_used_by_the_next_run(client, nights):
    from batchml.monitoring import accept_baseline

    store, _ = nights
    record = accept_baseline(store, f"night-{MIN_NIGHTS}", note="new camera")
    assert store.read_json(f"monitoring/accepted/night-{MIN_NIGHTS}.json")["note"] == "new camera"
    score(client, store, ScoreConfig("shapes-test", "shapes/production", "after"), verbose=False)
    row = monitor_run(store, "after").row
    assert row.accepted_run == record.run_id and row.history_nights == 1
    assert row.atc_accuracy is not None  # the card of a freshly trained model keeps the ATC threshold
    # the accepted run's estimated true mix is what COT expects from then on; a fresh card's BCTS fed the cells
    assert len(record.estimated_mix) == len(CLASSES) and sum(record.estimated_mix) == pytest.approx(1)
    assert len(row.mlls_priors) == len(CLASSES)
    assert row.cot_accuracy is None and row.label_free_method == "atc"  # 60 rows: too few for COT


def test_accepting_with_a_run_id_accepts_then_monitors_that_run(client, nights, tmp_path, capsys):
    from batchml.cli import main

    store = copy_store(nights[0], tmp_path / "store")
    score(client, store, ScoreConfig("shapes-test", "shapes/production", "later"), verbose=False)
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text("[monitor]\nshift_p_value = 0.0001\n")
    code = main(["monitor", "--root", store.url(), "--accept-baseline", "night-0", "--run-id", "later",
                 "--config", str(thresholds)])
    out = capsys.readouterr().out
    assert code in (0, 1) and "accepted the class mix of run night-0" in out
    assert "run later:" in out and f"thresholds from {thresholds}" in out
    assert read_table(store, "runs").set_index("run_id").loc["later", "accepted_run"] == "night-0"
