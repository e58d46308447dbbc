"""Stores written before the records had a schema version still read, and the layout parses
what it writes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchml import layout
from batchml.data import datasets
from batchml.errors import BatchmlError
from batchml.layout import DATASET_MANIFEST, ModelVersion, dataset_path
from batchml.records import (
    Alert,
    Aliases,
    DatasetManifest,
    ModelCard,
    MonitoringRow,
    RunManifest,
    RunStart,
    ScoredPartition,
    Sweep,
)

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
    assert m.partitions[0]["name"] == "part-00000.parquet"
    assert DatasetManifest.from_dict(m.to_dict()) == m


def test_an_old_run_manifest_reads_and_keeps_keys_it_does_not_know():
    m = RunManifest.from_dict({**OLD_RUN, "added_later": 1})
    assert m.partition_size is None and m.schema_version == 0
    assert ModelVersion.parse(m.model_version) == ModelVersion("cifar10", "v2")
    assert m.to_dict()["added_later"] == 1


# run.json as scoring wrote it before RunStart, and a partition's statistics file before ScoredPartition
OLD_START = {k: OLD_RUN[k] for k in ("run_id", "dataset", "input", "dataset_fingerprint", "model_version",
                                     "model_ref", "created_at")}
OLD_PART = {"partition": "part-00000.parquet", "rows": 3, "errors": 0, "stats": {"num_classes": 2, "rows": 3},
            "seconds": {"read": 0.1}, "worker": "host:1"}


def test_records_are_read_by_attribute_only():
    m = RunManifest.from_dict(OLD_RUN)
    with pytest.raises(TypeError):
        m["rows"]  # the subscript is what is tested
    assert not hasattr(m, "get")


@pytest.mark.parametrize(("written", "read"), [(np.int64(1), 1), (np.float64("nan"), 0), (None, 0), ("1", 0)])
def test_the_schema_version_reads_from_a_tables_numbers_and_is_0_where_there_is_none(written, read):
    assert DatasetManifest.from_dict({**OLD_DATASET, "schema_version": written}).schema_version == read


def test_an_old_run_start_reads_and_is_written_back_with_its_version(store):
    store.write_json(layout.run_path("night-1", layout.RUN_SPEC), OLD_START)
    run = RunStart.read(store, "night-1")
    assert (run.model_version, run.partition_size, run.schema_version) == ("cifar10/v2", None, 0)
    assert RunStart.written(run.to_dict()).to_dict() == {**OLD_START, "partition_size": None, "schema_version": 1,
                                                         "segment_by": None, "segment_from_path": None,
                                                         "raw_orientation": None}


def test_an_old_scored_partition_reads_without_its_batch_size_and_device(store):
    store.write_json(layout.run_stats("night-1", "part-00000.parquet"), OLD_PART)
    part = ScoredPartition.read(store, "night-1", "part-00000.parquet")
    assert (part.rows, part.batch_size, part.device, part.schema_version) == (3, None, None, 0)
    assert part.stats == OLD_PART["stats"] and part.seconds == {"read": 0.1}


@pytest.mark.parametrize("old", [{"production": "v2", "schema_version": "v1"}, {}])
def test_old_aliases_are_the_mapping_itself_even_with_an_alias_named_schema_version(old):
    aliases = Aliases.from_dict(old)
    assert aliases.aliases == old and aliases.schema_version == 0
    assert Aliases.from_dict(aliases.to_dict()).aliases == old


def test_promoting_writes_old_aliases_back_as_a_record(store):
    from batchml.registry import promote, read_aliases, resolve

    store.write_json(ModelVersion("cifar10", "v1").card_path, OLD_CARD)
    store.write_json(ModelVersion("cifar10", "v2").card_path, OLD_CARD)
    store.write_json(layout.aliases_path("cifar10"), {"production": "v2"})
    assert resolve(store, "production") == ModelVersion("cifar10", "v2")
    promote(store, ModelVersion("cifar10", "v1"), "staging")
    assert store.read_json(layout.aliases_path("cifar10")) == {
        "aliases": {"production": "v2", "staging": "v1"}, "schema_version": Aliases.SCHEMA_VERSION}
    assert read_aliases(store, "cifar10") == {"production": "v2", "staging": "v1"}
    assert read_aliases(store, "never-promoted") == {}


def test_a_sweep_plan_has_no_result_keys_until_it_is_finished():
    plan = Sweep.written({"sweep_id": "s1", "base": {"dataset": "d"}, "space": {"width": [8, 16]},
                         "trials": [{"width": 8}, {"width": 16}]})
    assert not plan.finished and "registered" not in plan.to_dict() and "best_trial" not in plan.to_dict()
    old = {**plan.to_dict(), "best_trial": 1, "registered": "m/v1", "test_accuracy": None}
    del old["schema_version"]
    done = Sweep.from_dict(old)  # as sweep.json was written before Sweep
    assert done.finished and (done.best_trial, done.schema_version, done.test_accuracy) == (1, 0, None)


def test_a_model_version_string_without_a_name_is_refused():
    with pytest.raises(BatchmlError, match="NAME/vN"):
        ModelVersion.parse("v2")


@pytest.mark.parametrize("text", ["../../etc/v1", "cifar10/production", "a/b/v1", "cifar10/"])
def test_a_model_version_string_cannot_leave_the_models_folder_or_name_an_alias(text):
    with pytest.raises(BatchmlError, match=r"NAME/vN|invalid model name"):
        ModelVersion.parse(text)


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
# monitoring columns written after the first monitored nights: rows before them lack them
NEWER_COLUMNS = ("alert_kinds", "cusum_up", "cusum_down", "cusum_counted", "atc_accuracy", "label_free_accuracy",
                 "label_free_method", "output_p_value", "output_ks", "output_worst", "estimated_priors_low",
                 "estimated_priors_high", "estimated_priors_interval", "model_reference_p_value",
                 "model_reference_js_distance", "score_hist", "class_prob_hist", "max_error_ratio", "schema_version")
# the alerts table's columns before schema_version
OLD_ALERT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("kind", pa.string()), ("severity", pa.string()),
    ("statistic", pa.float64()), ("threshold", pa.float64()), ("message", pa.string()),
])


def _old_run(store, run_id: str, night: int, share_a: float) -> dict:
    """A committed run as scoring writes it (manifest and partition statistics, no schema_version),
    its statistics made before the score histograms existed."""
    from batchml.stats import PartitionStats

    n = 40
    probs = np.tile([0.9, 0.1], (n, 1))
    probs[int(n * share_a):] = [0.2, 0.8]
    stats = PartitionStats.from_predictions(probs, np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)])
    record = {k: v for k, v in stats.to_dict().items() if k not in ("score_hist", "class_prob_hist")}
    part = "part-00000.parquet"
    store.write_json(layout.run_stats(run_id, part), {
        "partition": part, "rows": n, "errors": 0, "batch_size": 512, "stats": record,
        "seconds": {"read": 0.1}, "worker": "host:1", "device": {"backend": "tensorflow", "device": "cpu"}})
    manifest = {**OLD_RUN, "run_id": run_id, "dataset": f"night-{night}", "rows": n, "labelled": n,
                "committed_at": f"2026-11-{night + 10:02d}T01:00:00.000+00:00",
                "partitions": [{"partition": part, "rows": n, "errors": 0, "batch_size": 512,
                                "seconds": {"read": 0.1}, "worker": "host:1"}]}
    store.write_json(layout.run_path(run_id, layout.RUN_MANIFEST), manifest)
    return manifest


@pytest.fixture
def old_store(store):
    """A model version, two committed runs monitored by an earlier release (rows without the newer
    columns or schema_version; the second night's alert only in the alerts table) and a third
    committed run not monitored yet."""
    from batchml.monitoring.row import build_row, fold_run

    store.write_bytes(ModelVersion("cifar10", "v2").model_path, b"")
    store.write_json(ModelVersion("cifar10", "v2").card_path, OLD_CARD)
    store.write_json(layout.aliases_path("cifar10"), {"production": "v2"})
    for night, share in ((1, 0.5), (2, 0.9)):
        run_id = f"night-{night}"
        _old_run(store, run_id, night, share)
        manifest, stats = fold_run(store, run_id)
        row = build_row(manifest, stats, ModelCard.from_dict(OLD_CARD)).to_dict()
        old = {k: v for k, v in row.items() if k not in NEWER_COLUMNS}
        store.write_parquet(layout.monitoring_path("runs", run_id), pa.Table.from_pylist([old]))
        alerts = [{"run_id": run_id, "kind": "class_shift", "severity": "warning", "statistic": 1e-9,
                   "threshold": 1e-3, "message": "class mix differs"}] if night == 2 else []
        store.write_parquet(layout.monitoring_path("alerts", run_id), pa.Table.from_pylist(alerts, OLD_ALERT_SCHEMA))
    _old_run(store, "night-3", 3, 0.5)
    return store


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
    assert card.metrics.test.rows == 4
    assert ModelCard.from_dict(card.to_dict()) == card


@pytest.mark.parametrize(("damage", "message"), [
    ({"classes": "circle,square"}, "'classes' must be a non-empty list"),
    ({"reference": None}, "'reference' must hold"),
    ({"calibration": {"temperature": "1.2"}}, "'calibration.temperature' must be a number"),
    ({"metrics": []}, "'metrics.validation' must be an object"),
    ({"schema_version": 99}, "card schema 99, newer than this batchml reads"),
])
def test_a_damaged_card_is_refused_naming_the_file_and_the_fix(store, damage, message):
    from batchml.records import MONITORING_NEEDS
    from batchml.registry import read_card

    mv = ModelVersion("cifar10", "v2")
    store.write_json(mv.card_path, {**OLD_CARD, **damage})
    with pytest.raises(BatchmlError, match=f"models/cifar10/v2/card.json .*{message}"):
        read_card(store, mv, MONITORING_NEEDS)
    store.write_bytes(mv.card_path, b"{not json")
    with pytest.raises(BatchmlError, match=r"card\.json is not valid JSON"):
        read_card(store, mv)


def test_a_card_keeps_keys_a_newer_writer_added_at_any_depth():
    newer = {**OLD_CARD, "schema_version": 7, "lineage": ["x"],
             "reference": {**OLD_CARD["reference"], "interval": [0.7, 0.8]}}
    card = ModelCard.from_dict(newer)
    assert card.schema_version == 7 and card.extra == {"lineage": ["x"]}
    assert card.reference.extra == {"interval": [0.7, 0.8]}
    written = card.to_dict()
    assert (written["schema_version"], written["lineage"], written["reference"]["interval"]) == (7, ["x"], [0.7, 0.8])


def test_old_monitoring_rows_and_alerts_read_through_the_records(old_store):
    from batchml.monitoring import read_table

    runs = read_table(old_store, "runs").sort_values("committed_at")
    rows = [MonitoringRow.from_dict(r) for r in runs.to_dict("records")]
    assert [r.run_id for r in rows] == ["night-1", "night-2"]
    assert all(r.alert_kinds is None and r.cusum_up is None and r.schema_version == 0 for r in rows)
    assert rows[1].predicted_counts.tolist() == [36, 4] and rows[1].reference_accuracy == 0.75
    alert = Alert.from_dict(read_table(old_store, "alerts").iloc[0].to_dict())
    assert (alert.run_id, alert.kind, alert.schema_version) == ("night-2", "class_shift", 0)


def test_batchml_monitor_and_models_read_an_old_store(old_store, capsys):
    from batchml.cli import main
    from batchml.monitoring import read_table

    root = ["--root", old_store.config.root]
    assert main(["monitor", "--since", "2026-11-01", "--until", "2026-11-30", *root]) == 0
    assert "2 runs committed" in capsys.readouterr().out
    assert main(["models", "list", *root]) == 0
    assert "test accuracy 0.7500" in capsys.readouterr().out
    assert main(["models", "show", "production", *root]) == 0
    assert '"atc": null' in capsys.readouterr().out

    assert main(["monitor", "--run-id", "night-3", *root]) in (0, 1)  # an old card: no ATC, no BBSE
    assert "label-free accuracy estimates: calibrated confidence" in capsys.readouterr().out
    runs = read_table(old_store, "runs").set_index("run_id")
    assert runs.loc["night-3", "schema_version"] == MonitoringRow.SCHEMA_VERSION
    assert runs.loc["night-3", "atc_accuracy"] is None and runs.loc["night-3", "estimated_priors"] is None
    # the baseline: night 1 alone, night 2's alert (in the alerts table only) keeps it out
    assert runs.loc["night-3", "history_nights"] == 1
    assert main(["monitor", "--since", "2026-11-01", "--model", "cifar10/v2", *root]) == 0
    assert "3 runs committed" in capsys.readouterr().out


def test_the_dashboard_reads_an_old_store(old_store):
    from batchml.serve import dashboard_data, dashboard_views

    data = dashboard_data.MonitoringData(old_store)
    data.refresh()
    assert list(data.runs.run_id) == ["night-1", "night-2"]
    recent = dashboard_data.recent_nights(data, data.runs)
    assert recent.set_index("run_id").status.to_dict() == {"night-2": "WARNING", "night-1": "OK"}
    # each view renders (called here without the app's guard, which would show an error box instead)
    views = dashboard_views
    views.overview(data, data.runs), views.accuracy_over_time(data.runs)
    views.confusion_view(data.runs, True), views.class_mix(data.runs), views.runs_view(data, "night-2")
    assert "cifar10/v2" in views.models_view(old_store)[0].object


# -- the monitoring tables' columns ---------------------------------------------------------------


def test_an_empty_table_reads_with_its_records_columns(store):
    from batchml.monitoring import monitor_range, read_table
    from batchml.monitoring.baseline import Baseline, history

    assert list(read_table(store, "runs").columns) == MonitoringRow.columns()
    assert list(read_table(store, "alerts").columns) == Alert.columns()
    with pytest.raises(BatchmlError, match="no monitored runs"):
        monitor_range(store)
    run = RunManifest.from_dict({"run_id": "r", "model_version": "m/v1", "committed_at": "2026"})
    assert history(store, run, 30) == Baseline()


def test_the_dashboard_of_an_empty_store_says_there_is_nothing_yet(store):
    from batchml.serve.dashboard_data import MonitoringData
    from batchml.serve.dashboard_views import overview

    data = MonitoringData(store)
    data.refresh()
    assert data.runs.empty and list(data.runs.columns) == MonitoringRow.columns()
    assert "No monitored runs" in overview(data, data.runs)[0].object


def test_the_alerts_schema_is_the_alert_records():
    from batchml.monitoring.tables import ALERT_SCHEMA

    assert ALERT_SCHEMA.names == Alert.columns()


def test_columns_a_newer_monitor_writes_are_kept(store):
    from batchml.monitoring import read_table
    from batchml.monitoring.tables import write_alerts, write_run_row

    write_run_row(store, MonitoringRow.written({"run_id": "r", "committed_at": "2026-11-28",
                                                "class_prior_estimate": [0.5, 0.5]}))
    write_alerts(store, "r", [Alert.written({"run_id": "r", "kind": "k", "severity": "warning", "statistic": 1.0,
                                             "threshold": 0.5, "message": "m", "method": "new"})])
    row = MonitoringRow.from_dict(read_table(store, "runs").iloc[0].to_dict())
    assert row.extra["class_prior_estimate"].tolist() == [0.5, 0.5] and row.schema_version == 1
    assert read_table(store, "alerts").method.tolist() == ["new"]


def test_a_range_before_any_commit_names_the_days_the_runs_were_committed(store):
    from batchml.monitoring import monitor_range, monitor_run
    from tests.ops_fixtures import fake_run

    fake_run(store)
    today = monitor_run(store, "night-1").row.committed_at[:10]
    with pytest.raises(BatchmlError, match=rf"no monitored runs committed between 2000-01-01 and 2000-01-31: the "
                                           rf"monitored runs were committed from {today} to {today}"):
        monitor_range(store, "2000-01-01", "2000-01-31")
