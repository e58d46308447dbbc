"""Stores written before the records had a schema version still read, and the layout parses
what it writes."""

from __future__ import annotations

import pytest

from batchml.data import datasets
from batchml.errors import BatchmlError
from batchml.layout import DATASET_MANIFEST, ModelVersion, dataset_path
from batchml.records import Alert, DatasetManifest, ModelCard, MonitoringRow, RunManifest

# dataset.json as ingest wrote it before DatasetManifest (no schema_version)
OLD_DATASET = {
    "name": "night", "source": "class folders in /in (split test)", "split": "test", "classes": ["a", "b"],
    "partition_size": 2000, "partitions": [{"name": "part-00000.parquet", "rows": 3, "labelled": 2,
                                            "sha256": "ab"}],
    "rows": 3, "labelled": 2, "fingerprint": "cd", "created_at": "2026-11-28T01:00:00+00:00",
}
# manifest.json as scoring wrote it before RunManifest, from a run.json without partition_size
OLD_RUN = {
    "run_id": "night-1", "dataset": "night", "input": "dataset", "dataset_fingerprint": "cd",
    "model_version": "cifar10/v2", "model_ref": "production", "created_at": "2026-11-28T01:00:00+00:00",
    "classes": ["a", "b"], "batch_size": "auto", "max_error_ratio": 0.01, "rows": 3, "errors": 0, "labelled": 2,
    "batch_sizes_used": [512], "devices": [], "partitions": [], "wall_seconds": 1.5, "images_per_second": 2.0,
    "committed_at": "2026-11-28T01:00:01.500+00:00",
}


def test_an_old_dataset_manifest_reads_with_attributes(store):
    store.write_json(dataset_path("night", DATASET_MANIFEST), OLD_DATASET)
    m = datasets.read_manifest(store, "night")
    assert (m.classes, m.rows, m.fingerprint, m.schema_version) == (["a", "b"], 3, "cd", 0)
    assert m["partitions"][0]["name"] == "part-00000.parquet"  # subscripting still works
    assert DatasetManifest.from_dict(m.to_dict()) == m


def test_an_old_run_manifest_reads_and_keeps_keys_it_does_not_know():
    m = RunManifest.from_dict({**OLD_RUN, "added_later": 1})
    assert m.partition_size is None and m.schema_version == 0
    assert ModelVersion.parse(m.model_version) == ModelVersion("cifar10", "v2")
    assert m.to_dict()["added_later"] == 1


def test_a_model_version_string_without_a_name_is_refused():
    with pytest.raises(BatchmlError, match="NAME/vN"):
        ModelVersion.parse("v2")


# -- a store as the current release writes it -------------------------------------------------------

# card.json as training registers it today, less what older cards lack (ATC, the validation rows,
# the summed-probability matrix) and without schema_version
OLD_CARD = {
    "created_at": "2026-11-27T22:00:00+00:00", "arch": "tutorial", "classes": ["a", "b"],
    "preprocessing": {"height": 32, "width": 32, "mode": "RGB", "resample": "bilinear"}, "parameters": 1234,
    "training": {"dataset": "train", "epochs": 2, "seconds": 12.5, "validation_rows": 10, "train_rows": 90,
                 "device": {"backend": "tensorflow", "device": "cpu", "device_name": "cpu", "versions": {}}},
    "data": {"dataset": "train", "fingerprint": "ef", "test_dataset": "night", "test_fingerprint": "cd"},
    "metrics": {"validation": {"rows": 10, "accuracy": 0.8, "loss": 0.5, "confusion": [[4, 1], [1, 4]]},
                "test": {"rows": 4, "accuracy": 0.75, "loss": 0.6, "confusion": [[2, 0], [1, 1]]}},
    "learning_curves": {"loss": [0.9, 0.6], "accuracy": [0.6, 0.8], "val_loss": [0.7, 0.5],
                        "val_accuracy": [0.7, 0.8]},
    "fit": {"verdict": "good fit", "reason": "validation loss at or near its minimum"},
    "calibration": {"temperature": 1.2, "validation_nll_before": 0.5, "validation_nll_after": 0.45},
    "reference": {"split": "test", "dataset": "night", "rows": 4, "predicted_counts": [3, 1], "accuracy": 0.75},
    "name": "cifar10", "version": "v2",
}


def test_an_old_card_reads_with_attributes(store):
    from batchml.registry import read_card

    store.write_json(ModelVersion("cifar10", "v2").card_path, OLD_CARD)
    card = read_card(store, ModelVersion("cifar10", "v2"))
    assert card.schema_version == 0 and (card.name, card.version, card.arch) == ("cifar10", "v2", "tutorial")
    assert card.atc is None and card.atc_threshold is None and card.validation_rows is None
    assert card.metrics.validation.prob_confusion is None and card.metrics.validation.accuracy == 0.8
    assert card.test_accuracy == 0.75 and card.reference.accuracy == 0.75 and card.reference.predicted_counts == [3, 1]
    assert card.calibration.temperature == 1.2 and card.fit.verdict == "good fit"
    assert card.data.test_fingerprint == "cd" and card.training_seconds == 12.5 and card.device["device"] == "cpu"
    assert card["metrics"]["test"]["rows"] == 4  # subscripting still works
    assert ModelCard.from_dict(card.to_dict()) == card


def test_a_card_keeps_keys_a_newer_writer_added_at_any_depth():
    newer = {**OLD_CARD, "schema_version": 7, "lineage": ["x"],
             "reference": {**OLD_CARD["reference"], "interval": [0.7, 0.8]}}
    card = ModelCard.from_dict(newer)
    assert card.schema_version == 7 and card.extra == {"lineage": ["x"]}
    assert card.reference.extra == {"interval": [0.7, 0.8]}
    written = card.to_dict()
    assert (written["schema_version"], written["lineage"], written["reference"]["interval"]) == (7, ["x"], [0.7, 0.8])


# -- the monitoring tables' columns ---------------------------------------------------------------


def test_an_empty_table_reads_with_its_records_columns(store):
    from batchml.monitoring import monitor_range, read_table
    from batchml.monitoring.run_monitor import Baseline, _history

    assert list(read_table(store, "runs").columns) == MonitoringRow.columns()
    assert list(read_table(store, "alerts").columns) == Alert.columns()
    with pytest.raises(BatchmlError, match="no monitored runs"):
        monitor_range(store)
    assert _history(store, {"run_id": "r", "model_version": "m/v1", "committed_at": "2026"}, 30) == Baseline()


def test_the_dashboard_of_an_empty_store_says_there_is_nothing_yet(store):
    from batchml.serve import dashboard

    data = dashboard.MonitoringData(store)
    data.refresh()
    assert data.runs.empty and list(data.runs.columns) == MonitoringRow.columns()
    assert "No monitored runs" in dashboard.overview(data, data.runs)[0].object


def test_the_alerts_schema_is_the_alert_records():
    from batchml.monitoring.tables import ALERT_SCHEMA

    assert ALERT_SCHEMA.names == Alert.columns()


def test_columns_a_newer_monitor_writes_are_kept(store):
    from batchml.monitoring import read_table
    from batchml.monitoring.tables import write_alerts, write_run_row

    write_run_row(store, {"run_id": "r", "committed_at": "2026-11-28", "class_prior_estimate": [0.5, 0.5]})
    write_alerts(store, "r", [{"kind": "k", "severity": "warning", "statistic": 1.0, "threshold": 0.5,
                               "message": "m", "method": "new"}])
    row = MonitoringRow.from_dict(read_table(store, "runs").iloc[0].to_dict())
    assert row.extra["class_prior_estimate"].tolist() == [0.5, 0.5] and row.schema_version == 1
    assert read_table(store, "alerts").method.tolist() == ["new"]
