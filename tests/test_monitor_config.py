"""Monitoring's settings and accepted baselines: thresholds from a TOML file, the latest acceptance
winning, notes kept, damaged records skipped, each rule run once per run."""

from __future__ import annotations

import pytest

from batchml.cli import main
from batchml.errors import BatchmlError
from batchml.monitoring import MonitorConfig
from batchml.records import MonitoringRow


def test_thresholds_read_from_a_toml_file(tmp_path):
    path = tmp_path / "thresholds.toml"
    path.write_text("[monitor]\nshift_p_value = 0.0001\nhistory_nights = 14\n")
    cfg = MonitorConfig.from_file(path)
    assert (cfg.shift_p_value, cfg.history_nights, cfg.accuracy_drop) == (0.0001, 14, MonitorConfig().accuracy_drop)
    path.write_text("accuracy_drop = 0.1\n")  # a top-level key works as well
    assert MonitorConfig.from_file(path).accuracy_drop == 0.1


@pytest.mark.parametrize(("text", "problem"), [
    ("shift_pvalue = 0.01\n", "unknown key.*shift_pvalue.*known: shift_p_value"),
    ("history_nights = 'thirty'\n", "history_nights must be an integer"),
    ("history_nights = 2.5\n", "history_nights must be an integer"),
    ("accuracy_drop = true\n", "accuracy_drop must be a number"),
    ("accuracy_drop = -0.1\n", "must not be negative"),
    ("accuracy_drop = \n", "not a readable TOML file"),
    ("shift_p_value = nan\n", "shift_p_value must be a finite number"),  # NaN compares false: no alert ever
    ("history_nights = inf\n", "history_nights must be a finite number"),
    ("shift_p_value = 5.0\n", "shift_p_value is a probability: between 0 and 1"),
])
def test_a_bad_thresholds_file_is_refused_naming_it_and_the_key(tmp_path, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BatchmlError, match=problem) as err:
        MonitorConfig.from_file(path)
    assert str(path) in str(err.value)


def test_a_missing_thresholds_file_is_named(tmp_path):
    with pytest.raises(BatchmlError, match="no such file"):
        MonitorConfig.from_file(tmp_path / "none.toml")


def _monitored(store, run_id: str, committed_at: str, counts: list[int]) -> None:
    from batchml.monitoring.tables import write_run_row

    write_run_row(store, MonitoringRow.written({
        "run_id": run_id, "model_version": "m/v1", "committed_at": committed_at, "rows": sum(counts),
        "labelled": 0, "predicted_counts": counts, "confusion": [[0, 0], [0, 0]], "mlls_priors": [0.5, 0.5],
        "alert_kinds": []}))


def test_the_latest_acceptance_wins_even_of_an_older_run(store):
    from batchml.monitoring import accept_baseline
    from batchml.monitoring.baseline import accepted_baseline

    _monitored(store, "old", "2026-11-01", [50, 50])
    _monitored(store, "new", "2026-11-05", [90, 10])
    accept_baseline(store, "new")
    assert accepted_baseline(store, "m/v1", "2026-11-09").run_id == "new"
    accept_baseline(store, "old", "back to the first camera")  # go back to the older mix
    assert accepted_baseline(store, "m/v1", "2026-11-09").run_id == "old"
    # a night between the two runs knows only the older acceptance
    assert accepted_baseline(store, "m/v1", "2026-11-03").run_id == "old"


def test_accepting_again_without_a_note_keeps_the_earlier_note(store):
    from batchml.monitoring import accept_baseline

    _monitored(store, "r", "2026-11-01", [50, 50])
    accept_baseline(store, "r", "new camera at site 3")
    assert accept_baseline(store, "r").note == "new camera at site 3"
    assert accept_baseline(store, "r", "").note == ""  # an explicit empty note clears it


def test_a_damaged_accepted_record_is_skipped_with_a_warning_naming_it(store, capsys):
    from batchml import layout
    from batchml.monitoring import accept_baseline
    from batchml.monitoring.baseline import accepted_baseline

    _monitored(store, "good", "2026-11-01", [50, 50])
    accept_baseline(store, "good")
    store.write_bytes(layout.accepted_path("torn"), b'{"run_id": "torn", "model_')
    store.write_json(layout.accepted_path("odd"), {"run_id": 3})
    assert accepted_baseline(store, "m/v1", "2026-11-09").run_id == "good"
    err = capsys.readouterr().err
    assert "torn.json" in err and "odd.json" in err and "--accept-baseline" in err


def test_note_without_accept_is_refused(store, capsys):
    assert main(["monitor", "--root", store.url(), "--run-id", "r", "--note", "why"]) == 2
    assert "--note goes with --accept-baseline" in capsys.readouterr().err


def test_a_reversed_range_is_called_reversed(store, capsys):
    assert main(["monitor", "--root", store.url(), "--since", "2026-11-05", "--until", "2026-11-01"]) == 2
    assert "reversed" in capsys.readouterr().err


def test_each_rule_runs_once_per_run(monkeypatch):
    """The CUSUM needs tonight's single-night verdict; the rules must not run again for it."""
    import numpy as np

    from batchml.monitoring import evaluate, rules
    from batchml.records import ModelCard, RunManifest
    from batchml.stats import PartitionStats

    calls = []
    for name in ("new_shift", "sustained_shift", "output_shift", "accuracy_drop", "expected_accuracy_drop"):
        rule = getattr(rules, name)
        monkeypatch.setattr(rules, name, lambda *a, _r=rule, _n=name, **k: calls.append(_n) or _r(*a, **k))
    card = ModelCard.from_dict({"reference": {"accuracy": 0.7, "predicted_counts": [50, 50]},
                                "metrics": {"validation": {}}})
    run = RunManifest.from_dict({"run_id": "r", "model_version": "m/v1", "committed_at": "1", "classes": ["a", "b"],
                                 "max_error_ratio": 0.01})
    stats = PartitionStats(2, rows=100, predicted_counts=np.array([50, 50]), calibrated_confidence_sum=70.0)
    evaluate(run, stats, card)
    assert sorted(calls) == sorted(set(calls)) and "sustained_shift" in calls


def test_an_empty_segment_is_refused_not_read_as_the_whole_run(store, capsys):
    from tests.ops_fixtures import fake_run

    fake_run(store)
    assert main(["monitor", "--run-id", "night-1", "--segment", "", "--root", store.config.root]) == 2
    assert "no segment ''" in capsys.readouterr().err
