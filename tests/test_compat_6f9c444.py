"""A store written by the release at 6f9c444 (``tests/fixtures/store-6f9c444``, made by that
release's code: ``tests/fixtures/make_store_6f9c444.py``) reads with today's records, and
monitoring its runs again gives the rows and alerts that release stored. No Dask, no Keras."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from batchml import layout
from batchml.data import datasets
from batchml.layout import ModelVersion
from batchml.monitoring import monitor_range, monitor_run, read_table
from batchml.records import (
    FAILURE_SCHEMA,
    MONITORING_NEEDS,
    Alert,
    MonitoringRow,
    RunManifest,
    RunStart,
    ScoredPartition,
    is_absent,
)
from batchml.registry import list_models, list_versions, read_aliases, read_card, resolve
from batchml.stats import PartitionStats
from batchml.store import Store, StoreConfig

FIXTURE = Path(__file__).parent / "fixtures" / "store-6f9c444"
RUNS = [f"night-{n}" for n in range(1, 9)]  # in the order they were scored and monitored
MODEL = ModelVersion("shapes", "v1")
# what a monitoring row may differ in: when it was written, and the version of its record
NOT_COMPARED = ("monitored_at", "schema_version")


@pytest.fixture(scope="module")
def stored() -> Store:
    """The fixture as committed: read only."""
    return Store(StoreConfig(str(FIXTURE)))


@pytest.fixture
def copied(tmp_path) -> Store:
    """A copy to monitor again (monitoring rewrites the runs' rows)."""
    shutil.copytree(FIXTURE, tmp_path / "store")
    return Store(StoreConfig(str(tmp_path / "store")))


def test_its_datasets_read(stored):
    assert datasets.list_datasets(stored) == ["night-1", "shapes-test", "shapes-train"]
    for name in datasets.list_datasets(stored):
        m = datasets.read_manifest(stored, name)
        assert m.schema_version == 1 and m.classes == ["circle", "square", "stripes"]
        assert sum(p["rows"] for p in m.partitions) == m.rows
        assert sum(datasets.read_partition(stored, name, p["name"]).num_rows for p in m.partitions) == m.rows


def test_its_model_card_and_aliases_read(stored):
    assert list_models(stored) == ["shapes"] and list_versions(stored, "shapes") == ["v1"]
    assert read_aliases(stored, "shapes") == {"production": "v1", "staging": "v1"}
    assert resolve(stored, "shapes/production") == resolve(stored, "shapes/staging") == MODEL
    card = read_card(stored, MODEL, MONITORING_NEEDS)
    assert (card.name, card.version, card.arch, card.schema_version) == ("shapes", "v1", "fast", 1)
    assert card.metrics.test.rows == card.reference.rows == 36 and card.data.dataset == "shapes-train"
    assert card.calibration.bcts is not None and card.atc_threshold is not None and card.validation_rows
    assert card.metrics.validation.prob_confusion is not None and card.fit.verdict


@pytest.mark.parametrize("run_id", RUNS)
def test_each_runs_start_manifest_and_partitions_read(stored, run_id):
    start, manifest = RunStart.read(stored, run_id), RunManifest.read(stored, run_id)
    assert start.schema_version == 0 and manifest.schema_version == 1  # run.json had no version then
    assert (start.run_id, start.model_version, start.dataset) == (run_id, str(MODEL), manifest.dataset)
    assert start.input == ("dataset" if run_id == "night-1" else "images")
    parts = [ScoredPartition.read(stored, run_id, p["partition"]) for p in manifest.partitions]
    assert all(p.schema_version == 0 and p.device["backend"] == "tensorflow" and p.batch_size for p in parts)
    total = PartitionStats.total([PartitionStats.from_dict(p.stats) for p in parts], len(manifest.classes))
    assert (total.rows, total.errors, total.labelled) == (manifest.rows, manifest.errors, manifest.labelled)
    assert total.has("score_hist") and total.has("cell_counts")


def test_its_monitoring_tables_read_as_records(stored):
    rows = [MonitoringRow.from_dict(r) for r in read_table(stored, "runs").to_dict("records")]
    assert sorted(r.run_id for r in rows) == RUNS
    assert {r.accepted_run for r in rows} == {None, "night-2"} and all(r.alert_kinds is not None for r in rows)
    alerts = [Alert.from_dict(a) for a in read_table(stored, "alerts").to_dict("records")]
    assert sorted({a.run_id for a in alerts}) == ["night-8"]
    assert {a.kind for a in alerts} == {"new_shift", "sustained_shift", "expected_accuracy_drop"}
    assert stored.list(layout.accepted_folder(), ".json") == ["night-2.json"]
    snapshot = stored.read_parquet(layout.monitoring_path("failures", "night-1"))
    assert set(FAILURE_SCHEMA.names) <= set(snapshot.column_names)


def test_a_range_over_its_runs_folds_every_night(stored):
    summary = monitor_range(stored, model_version=str(MODEL))
    assert (summary["runs"], summary["rows"], summary["errors"], summary["labelled"]) == (8, 30 + 7 * 2000, 1, 30)


def test_monitoring_its_runs_again_gives_the_rows_and_alerts_it_stored(stored, copied):
    for run_id in RUNS:  # in order: each night's baseline is the nights before it
        monitor_run(copied, run_id)
    after = {r["run_id"]: r for r in read_table(copied, "runs").to_dict("records")}
    for run_id in RUNS:
        # the columns that release wrote (the table reader would add today's newer ones, as None)
        before = stored.read_parquet(layout.monitoring_path("runs", run_id)).to_pandas().to_dict("records")[0]
        for column, value in before.items():
            if column not in NOT_COMPARED:
                assert _same(after[run_id][column], value), f"{run_id}: {column} {after[run_id][column]!r} != {value!r}"
    alert_columns = ["run_id", "kind", "severity", "statistic", "threshold", "message"]
    assert _alerts(read_table(copied, "alerts"), alert_columns) == _alerts(read_table(stored, "alerts"), alert_columns)
    for run_id in RUNS:
        rel = layout.monitoring_path("failures", run_id)
        assert copied.read_parquet(rel).equals(stored.read_parquet(rel))


def _alerts(table, columns: list[str]) -> list[tuple]:
    return sorted(tuple(a[c] for c in columns) for a in table.to_dict("records"))


def _same(a, b) -> bool:
    """Equal values as read back from Parquet: lists (arrays) element by element, floats to within
    rounding (a refactor may add in another order), absent (None or NaN) only to absent."""
    if is_absent(a) or is_absent(b):
        return is_absent(a) and is_absent(b)
    if isinstance(a, list | tuple | np.ndarray) or isinstance(b, list | tuple | np.ndarray):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | np.floating) or isinstance(b, float | np.floating):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return a == b
