"""Damaged files named, skipped by the readers that can go on, and found by ``batchml doctor``
(fast lane: a committed run written by hand; the repairs that score again: test_ops_scoring.py)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

from batchml import layout
from batchml.cli import main
from batchml.cli.output import warning_printer
from batchml.doctor import RECOMMIT, RESCORE, check_store
from batchml.errors import BatchmlError
from batchml.integrity import DamagedFileError, DamagedFileWarning, read_stats, skip_damaged
from batchml.monitoring import fold_run, monitor_run, read_table
from batchml.monitoring.baseline import accepted_baseline
from batchml.repair import quarantine
from tests.ops_fixtures import MODEL, fake_run

STATS = layout.run_stats("night-1", "part-00001.parquet")


@pytest.fixture
def night(store):
    fake_run(store)
    monitor_run(store, "night-1")
    return store


def _edit_stats(store, change):
    record = store.read_json(STATS)
    change(record)
    store.write_bytes(STATS, json.dumps(record).encode())  # json writes NaN as NaN, as a bad writer would


@pytest.mark.parametrize(("change", "problem"), [
    (lambda r: r["stats"].__setitem__("confidence_sum", math.nan), "NaN"),
    (lambda r: r["stats"].__setitem__("predicted_counts", [-5, 30, 15]), "'predicted_counts' holds a negative"),
    (lambda r: r.pop("stats"), "no 'stats' object"),
    # values of the wrong type or beyond any count were tracebacks ("rerun to resume"), not the file and its repair
    (lambda r: r["stats"].__setitem__("rows", "abc"), "'rows' is not a number"),
    (lambda r: r["stats"].__setitem__("correct", [1, 2]), "'correct' is not a number"),
    (lambda r: r["stats"].__setitem__("confidence_sum", {"a": 1}), "'confidence_sum' is not a number"),
    (lambda r: r["stats"].__setitem__("labelled", True), "'labelled' is not a number"),
    (lambda r: r["stats"].__setitem__("duplicate_rows", 10**30), "'duplicate_rows' holds a count too large"),
])
def test_a_damaged_stats_file_is_a_clear_error_naming_it_and_the_repair(night, change, problem):
    _edit_stats(night, change)
    with pytest.raises(DamagedFileError, match=rf"{STATS}.*{problem}.*batchml doctor --repair"):
        fold_run(night, "night-1")


def test_a_torn_stats_file_is_named(night):
    night.write_bytes(STATS, b'{"partition": "part-00001.parq')
    with pytest.raises(DamagedFileError, match=rf"{STATS} is damaged \(not JSON"):
        read_stats(night, "night-1", "part-00001.parquet")


def test_a_deleted_stats_file_of_a_committed_run_is_named_missing(night):
    night.delete(STATS)
    with pytest.raises(DamagedFileError, match=rf"{STATS} is damaged \(missing\): run `batchml doctor --repair`"):
        monitor_run(night, "night-1")
    (found,) = check_store(night).findings
    assert (found.path, found.problem, found.action, found.run_id) == (STATS, "missing", RESCORE, "night-1")


def test_a_truncated_monitoring_file_is_skipped_with_a_warning_naming_it(night):
    fake_run(night, "night-2", seed=1)
    monitor_run(night, "night-2")
    rel = layout.monitoring_path("runs", "night-1")
    night.write_bytes(rel, night.read_bytes(rel)[:100])
    with pytest.warns(DamagedFileWarning, match=rf"skipped damaged file .*{rel}"):
        runs = read_table(night, "runs")
    assert runs.run_id.tolist() == ["night-2"]
    with pytest.warns(DamagedFileWarning):
        monitor_run(night, "night-2")  # tonight's monitoring goes on


def test_the_command_line_names_a_damaged_file_once(night, capsys):
    fake_run(night, "night-2", seed=1)
    rel = layout.monitoring_path("runs", "night-1")
    night.write_bytes(rel, night.read_bytes(rel)[:100])
    assert main(["monitor", "--run-id", "night-2", "--root", night.config.root]) in (0, 1)
    err = capsys.readouterr().err
    assert err.count(f"batchml: WARNING: skipped damaged file {night.url(rel)}") == 1, err
    # however many readers skip it, from however many places (one monitor on S3 printed it twice)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = warning_printer()
        for _ in range(2):
            skip_damaged("s3://b/monitoring/runs/x.parquet", "torn")
        skip_damaged("s3://b/monitoring/runs/x.parquet", "torn")
        skip_damaged("s3://b/monitoring/runs/y.parquet", "torn")
    assert capsys.readouterr().err.count("batchml: WARNING: skipped damaged file") == 2


def test_a_malformed_accepted_record_is_skipped_with_a_warning(night, capsys):
    night.write_bytes(layout.accepted_path("night-1"), b"{not json")
    assert accepted_baseline(night, str(MODEL), "9999") is None
    assert "accepted/night-1.json" in capsys.readouterr().err


def test_doctor_names_each_damaged_file_what_depends_on_it_and_the_repair(night, capsys):
    night.write_bytes(layout.run_output("night-1", "predictions", "part-00000.parquet"), b"PAR1 torn")
    night.write_bytes(layout.monitoring_path("alerts", "night-1"), b"")
    night.write_bytes(layout.accepted_path("night-1"), b"[]")
    night.write_json(MODEL.card_path, {})
    night.write_json(layout.aliases_path("tiny"), {"production": "../../../etc"})
    code = main(["doctor", "--root", night.config.root])
    out = capsys.readouterr().out
    assert code == 1
    for rel in ("runs/night-1/predictions/part-00000.parquet", "monitoring/alerts/night-1.parquet",
                "monitoring/accepted/night-1.json", "models/tiny/v1/card.json", "models/tiny/aliases.json"):
        assert f"DAMAGED {night.path(rel)}" in out, rel
    assert "needed by: run night-1: its predictions rows" in out
    assert "batchml monitor --accept-baseline night-1" in out
    assert "5 damaged" in out


def test_doctor_exits_0_on_a_whole_store(night, capsys):
    assert main(["doctor", "--root", night.config.root]) == 0
    assert "the store is whole" in capsys.readouterr().out


def test_repair_quarantines_a_damaged_monitoring_file_and_monitors_the_run_again(night, capsys):
    rel = layout.monitoring_path("runs", "night-1")
    torn = night.read_bytes(rel)[:50]
    night.write_bytes(rel, torn)
    assert main(["doctor", "--repair", "--root", night.config.root]) == 0
    (moved,) = [p for p in night.fs.find(night.path(layout.QUARANTINE))]
    assert moved.endswith(rel) and Path(moved).read_bytes() == torn  # kept, never deleted
    assert read_table(night, "runs").run_id.tolist() == ["night-1"]
    assert "the store is whole" in capsys.readouterr().out


def test_quarantine_moves_a_file_whole(store):
    store.write_bytes("runs/x/stats/part-00000.json", b"\x00torn")
    target = quarantine(store, "runs/x/stats/part-00000.json", "20261130T000000Z")
    assert target == "quarantine/20261130T000000Z/runs/x/stats/part-00000.json"
    assert store.read_bytes(target) == b"\x00torn" and not store.exists("runs/x/stats/part-00000.json")


def test_a_damaged_manifest_is_named_and_left_for_the_repair(night):
    night.write_bytes(layout.run_path("night-1", layout.RUN_MANIFEST), b"{")
    (found,) = check_store(night).findings
    assert found.path.endswith("manifest.json") and "commits the run again" in found.fix
    with pytest.raises(BatchmlError):
        fold_run(night, "night-1")


@pytest.mark.parametrize("kind", ["hashes", "failures"])
def test_a_torn_hashes_or_failures_file_is_named_with_the_repair_not_a_traceback(night, kind):
    rel = (layout.run_hashes if kind == "hashes" else lambda r, p: layout.run_output(r, kind, p))(
        "night-1", "part-00000.parquet")
    night.write_bytes(rel, b"PAR1 torn")
    with pytest.raises(DamagedFileError, match=rf"{rel} is damaged \(not readable as Parquet.*doctor --repair"):
        monitor_run(night, "night-1")
    (found,) = check_store(night).findings
    assert (found.path, found.action, found.run_id) == (rel, RESCORE, "night-1")



def test_doctor_finds_a_torn_segments_table_and_a_torn_novelty_reference(night):
    from batchml.records import ModelCard

    rel = layout.monitoring_path("segments", "night-1")
    night.write_bytes(rel, b"PAR1 torn")
    card = night.read_json(MODEL.card_path)
    night.write_json(MODEL.card_path, {**card, "novelty": ModelCard.from_dict(card).novelty or {"method": "knn"}})
    night.write_bytes(MODEL.novelty_path, b"PK torn")
    found = {f.path: f for f in check_store(night).findings}
    assert set(found) == {rel, MODEL.novelty_path}
    assert found[rel].action == "remonitor" and "restore it" in found[MODEL.novelty_path].fix


def test_doctor_checks_runs_and_partitions_at_once_and_reports_them_in_order(night):
    for run_id, seed in (("night-2", 1), ("night-3", 2)):
        fake_run(night, run_id, partitions=6, rows=10, seed=seed)
    torn = [layout.run_stats(r, layout.partition_name(p)) for r, p in
            (("night-1", 1), ("night-2", 0), ("night-2", 5), ("night-3", 3))]
    for rel in reversed(torn):
        night.write_bytes(rel, b"{")
    checkup = check_store(night)
    assert [f.path for f in checkup.findings] == torn  # the store's order, whatever finished first
    assert checkup.checked >= 2 + 6 + 6


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("committed_at", {"a": 1}, "'committed_at' is not an ISO time"),
    ("committed_at", 7, "'committed_at' is not an ISO time"),
    ("committed_at", "yesterday", "'committed_at' is not an ISO time"),
    ("classes", 3, "'classes' is not a list of class names"),
    ("partitions", 5, "its partitions are not named"),
    ("model_version", ["tiny/v1"], "'model_version' is not text"),
    ("max_error_ratio", "1%", "'max_error_ratio' is not a number"),
])
def test_a_manifest_with_fields_of_the_wrong_type_is_named_by_monitor_and_doctor(night, key, value, problem):
    """A committed_at of the wrong type reached the monitoring table, and every later monitor of the model
    failed comparing it (a traceback saying rerun to resume); doctor called such a manifest whole."""
    rel = layout.run_path("night-1", layout.RUN_MANIFEST)
    record = night.read_json(rel)
    record[key] = value
    night.write_json(rel, record)
    with pytest.raises(DamagedFileError, match=rf"{rel}.*{problem}.*batchml doctor --repair"):
        monitor_run(night, "night-1")
    (found,) = check_store(night).findings
    assert found.path == rel and problem in found.problem


def test_doctor_on_a_root_that_holds_no_store_fails(tmp_path, capsys):
    """A scheduled health check with a mistyped --root must not pass."""
    assert main(["doctor", "--root", str(tmp_path / "no-such-store")]) == 2
    assert "holds no batchml store" in capsys.readouterr().err


def test_doctor_names_a_torn_append_record_and_a_monitored_run_whose_manifest_is_gone(night):
    record = layout.run_append("night-1", 0)
    night.write_bytes(record, b'{"inputs": {"part-')
    night.delete(layout.run_path("night-1", layout.RUN_MANIFEST))
    checkup = check_store(night)
    assert {f.path: f.action for f in checkup.findings} == {
        record: RECOMMIT, layout.run_path("night-1", layout.RUN_MANIFEST): RECOMMIT}
    assert checkup.unfinished == []  # not merely unfinished: it was committed and monitored


def test_doctor_exits_1_when_a_repair_fails(night, capsys, monkeypatch):
    import batchml.repair

    night.write_bytes(layout.monitoring_path("alerts", "night-1"), b"torn")

    def repaired_but_one(store, *args, **kwargs):  # the store is whole after, yet one thing failed
        store.delete(layout.monitoring_path("alerts", "night-1"))
        return ["run night-2: could not score it again"]

    monkeypatch.setattr(batchml.repair, "repair", repaired_but_one)
    assert main(["doctor", "--repair", "--root", night.config.root]) == 1
    assert "the store is whole; 1 thing(s) not repaired" in capsys.readouterr().out


@pytest.mark.parametrize("table", ["failures", "segments"])
def test_the_dashboard_skips_a_torn_run_file_with_a_warning_as_doctor_says(night, table):
    from batchml.serve.dashboard_data import MonitoringData

    rel = layout.monitoring_path(table, "night-1")
    night.write_bytes(rel, b"PAR1 torn")
    with pytest.warns(DamagedFileWarning, match=rf"{table}/night-1.parquet"):
        assert getattr(MonitoringData(night), table)("night-1").empty
