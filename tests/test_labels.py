"""Late labels (``batchml.labels``): checked, stored as batches whose deltas fold exactly into a
run's statistics, and judged by monitoring without changing what the night measured.

The runs here are written as scoring writes them (predictions, partition statistics from
``PartitionStats.from_predictions``, the manifest last) from synthetic probabilities: fast, and exact.
The same on a real Dask run: ``test_labels_scored.py``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchml import layout
from batchml.errors import BatchmlError
from batchml.labels import LabelsError, add_labels, committed, realized, reweighted
from batchml.layout import ModelVersion
from batchml.monitoring import fold_run, format_report, monitor_run
from batchml.monitoring.baseline import history
from batchml.monitoring.rules import MonitorConfig
from batchml.records import RunManifest, ScoredPartition
from batchml.score.segments import groups
from batchml.stats import LABEL_FIELDS, PartitionStats
from tests.test_records import OLD_CARD, OLD_RUN

CLASSES = ["a", "b", "c"]


def night_probs(rng, n: int, k: int = 3, sharpness: float = 2.0) -> np.ndarray:
    """Class probabilities of ``n`` rows, float32 as a model returns them."""
    logits = rng.normal(0, sharpness, (n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def calibrated_labels(rng, probs: np.ndarray) -> np.ndarray:
    """True labels drawn from the probabilities: the model is calibrated."""
    u = rng.random(len(probs))[:, None]
    return (probs.cumsum(axis=1) < u).sum(axis=1).clip(0, probs.shape[1] - 1)


def write_run(store, run_id: str, probs: np.ndarray, labels: np.ndarray, classes=CLASSES, parts: int = 2,
              segments: list[str] | None = None, novelty: np.ndarray | None = None, night: int = 1,
              model_version: str = "cifar10/v2") -> RunManifest:
    """A committed run as scoring writes it; ``labels`` -1 where unknown at ingest."""
    meta = []
    for i, rows in enumerate(np.array_split(np.arange(len(probs)), parts)):
        part = layout.partition_name(i)
        p, y = probs[rows], labels[rows]
        nov = None if novelty is None else novelty[rows]
        stats = PartitionStats.from_predictions(p, y, novelty=nov)
        seg = [segments[j] for j in rows] if segments else None
        if seg:  # as scoring keeps them: the top values of the partition, the rest as (other)
            stats.segments = {v: PartitionStats.from_predictions(p[r], y[r], novelty=None if nov is None else nov[r])
                              for v, (r, _) in groups(seg, list(range(len(rows))), [], top=2).items()}
        n, predicted = len(rows), p.argmax(axis=1)
        store.write_parquet(layout.run_output(run_id, "predictions", part), pa.table({
            "image_id": pa.array([f"img-{j:05d}" for j in rows]),
            "predicted": pa.array(predicted, pa.int16()),
            "predicted_class": pa.array(np.asarray(classes, dtype=object)[predicted], pa.string()),
            "probability": pa.array(p.max(axis=1), pa.float32()),
            "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(p.ravel(), pa.float32()), len(classes)),
            "label": pa.array(y, pa.int16(), mask=y < 0),
            "model_version": pa.array([model_version] * n), "run_id": pa.array([run_id] * n),
            "partition": pa.array([part] * n),
            "novelty": pa.array(nov if nov is not None else [None] * n, pa.float32()),
            **({"segment": pa.array(seg, pa.string())} if seg else {}),
        }))
        store.write_json(layout.run_stats(run_id, part), ScoredPartition.written({
            "partition": part, "rows": n, "errors": 0, "batch_size": 64, "stats": stats.to_dict(),
            "seconds": {}, "worker": "host:1", "device": None}).to_dict())
        meta.append({"partition": part, "rows": n, "errors": 0, "batch_size": 64, "seconds": {}, "worker": "host:1"})
    manifest = RunManifest.written({
        **OLD_RUN, "run_id": run_id, "dataset": f"night-{night}", "classes": classes, "model_version": model_version,
        "rows": len(probs), "labelled": int((labels >= 0).sum()), "partitions": meta,
        "committed_at": f"2026-11-{night + 10:02d}T01:00:00.000+00:00"})
    store.write_json(layout.run_path(run_id, layout.RUN_MANIFEST), manifest.to_dict())
    return manifest


def labels_file(tmp_path, ids, labels, name: str = "labels.parquet", **extra) -> str:
    path = str(tmp_path / name)
    frame = pd.DataFrame({"image_id": list(ids), "label": list(labels), **extra})
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path)
    return path


def ids_of(rows) -> list[str]:
    return [f"img-{j:05d}" for j in rows]


def files_under(store, rel: str) -> dict[str, int]:
    root = store.path(rel)
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(root) for f in fs}


def label_fields(stats: PartitionStats) -> dict:
    out = {f: np.asarray(getattr(stats, f)).tolist() for f in LABEL_FIELDS}
    out["segments"] = {v: label_fields(s) for v, s in stats.segments.items()}
    return out


@pytest.fixture
def night(store):
    """600 rows over 3 partitions with segments and novelty, unlabelled at ingest; and the labels
    of a random 30% of them."""
    rng = np.random.default_rng(5)
    probs = night_probs(rng, 600)
    truth = calibrated_labels(rng, probs)
    segments = [("north", "south", "east", "west")[j % 4] for j in range(600)]
    novelty = rng.gamma(2.0, 0.5, 600).astype(np.float32)
    chosen = np.sort(rng.choice(600, 180, replace=False))
    write_run(store, "late", probs, np.full(600, -1), parts=3, segments=segments, novelty=novelty)
    at_ingest = np.full(600, -1)
    at_ingest[chosen] = truth[chosen]
    write_run(store, "ingest", probs, at_ingest, parts=3, segments=segments, novelty=novelty)
    return {"probs": probs, "truth": truth, "chosen": chosen, "segments": segments, "novelty": novelty}


# -- exact folding --------------------------------------------------------------------------------


def test_late_labels_fold_exactly_as_the_same_labels_at_ingest(store, tmp_path, night):
    chosen, truth = night["chosen"], night["truth"]
    # two batches, names in one and indices in the other
    first, second = chosen[:100], chosen[100:]
    add_labels(store, labels_file(tmp_path, ids_of(first), [CLASSES[t] for t in truth[first]], "one.parquet"), ["late"])
    add_labels(store, labels_file(tmp_path, ids_of(second), truth[second].tolist(), "two.csv"), ["late"])
    _, late = fold_run(store, "late")
    _, ingest = fold_run(store, "ingest")
    assert late.labelled == 180 and label_fields(late) == label_fields(ingest)
    assert "(other)" in late.segments and len(late.segments) >= 3 and late.novel_labelled > 0
    # and the rest of the statistics are untouched
    assert late.to_dict() == ingest.to_dict()


def test_a_rerun_writes_nothing(store, tmp_path, night):
    path = labels_file(tmp_path, ids_of(night["chosen"]), night["truth"][night["chosen"]].tolist())
    [added] = add_labels(store, path, ["late"])
    before = files_under(store, "runs/late")
    [again] = add_labels(store, path, ["late"])
    assert files_under(store, "runs/late") == before
    assert again.already_added and again.batch.batch_id == added.batch.batch_id and len(committed(store, "late")) == 1
    # the same labels in another file, another order, as names: known, nothing written
    order = night["chosen"][::-1]
    renamed = labels_file(tmp_path, ids_of(order), [CLASSES[t] for t in night["truth"][order]], "again.csv")
    [known] = add_labels(store, renamed, ["late"])
    assert known.batch.batch_id == added.batch.batch_id and files_under(store, "runs/late") == before


def test_every_problem_is_reported_before_anything_is_written(store, tmp_path, night):
    path = labels_file(tmp_path, ["img-00001", "img-00002", "img-00002", "nope-1", "nope-2"],
                       ["a", "kitten", "b", "c", "7"])
    with pytest.raises(LabelsError) as err:
        add_labels(store, path, ["late"])
    message = str(err.value)
    assert "2 row(s) with labels that are not the model's classes ('7', 'kitten')" in message
    assert "0=a, 1=b, 2=c" in message and "keep one row per image" in message and "'img-00002'" in message
    assert not store.exists("runs/late/labels")
    # a clean file with unknown ids: named, nothing written
    with pytest.raises(LabelsError, match=r"2 image_id\(s\) are in no prediction of run late \('nope-1', 'nope-2'\)"):
        add_labels(store, labels_file(tmp_path, ["img-00001", "nope-1", "nope-2"], ["a", "b", "c"]), ["late"])
    assert not store.exists("runs/late/labels")


def test_a_file_without_the_columns_is_refused_naming_them(store, tmp_path, night):
    path = str(tmp_path / "bad.csv")
    pd.DataFrame({"id": ["img-00001"], "class": ["a"]}).to_csv(path, index=False)
    with pytest.raises(LabelsError, match="no column 'image_id', 'label' \\(it has id, class\\)"):
        add_labels(store, path, ["late"])
    header_only = str(tmp_path / "empty.csv")
    pd.DataFrame({"image_id": [], "label": []}).to_csv(header_only, index=False)
    with pytest.raises(LabelsError, match=r"no rows \(only a header\): export the labels again"):
        add_labels(store, header_only, ["late"])
    assert not store.exists("runs/late/labels")


def test_labels_and_ids_of_odd_types_are_named_problems_not_tracebacks(store, tmp_path, night):
    """A float label column holding inf or 1e300, a digit that is not ASCII, an id column of bytes that
    are not UTF-8 or of lists: each was an unexpected exception ("rerun to resume") or a label read as
    another class ('\u0662', an Arabic two, was class 2)."""
    floats = str(tmp_path / "floats.parquet")
    pq.write_table(pa.table({"image_id": ["img-00001", "img-00002", "img-00003"],
                             "label": [1.0, float("inf"), 1e300]}), floats)
    with pytest.raises(LabelsError,
                       match=r"2 row\(s\) with labels that are not the model's classes \('1e\+300', 'inf'\)"):
        add_labels(store, floats, ["late"])
    digits = str(tmp_path / "digits.csv")
    with open(digits, "w", encoding="utf-8") as f:
        f.write("image_id,label\nimg-00001,\u00b2\nimg-00002,\u0662\n")
    with pytest.raises(LabelsError, match=r"2 row\(s\) with labels that are not the model's classes"):
        add_labels(store, digits, ["late"])
    for ids in ([b"img-00001", b"\xff\xfe"], [["img-00001"], ["img-00002"]]):
        odd = str(tmp_path / "odd.parquet")
        pq.write_table(pa.table({"image_id": ids, "label": [1, 2]}), odd)
        with pytest.raises(LabelsError, match=r"column 'image_id' \(.+\) cannot be read as text"):
            add_labels(store, odd, ["late"])
    assert not store.exists("runs/late/labels")


def test_conflicting_labels_are_refused_unless_replaced_and_a_replacement_folds_exactly(store, tmp_path, night):
    chosen, truth = night["chosen"], night["truth"]
    wrong = (truth[chosen] + 1) % 3
    add_labels(store, labels_file(tmp_path, ids_of(chosen), wrong.tolist(), "wrong.parquet"), ["late"])
    right = labels_file(tmp_path, ids_of(chosen), truth[chosen].tolist(), "right.parquet")
    with pytest.raises(LabelsError, match=r"180 image\(s\) of run late already have another label .*--replace"):
        add_labels(store, right, ["late"])
    assert len(committed(store, "late")) == 1
    [added] = add_labels(store, right, ["late"], replace=True)
    assert (added.new, added.replaced, added.unchanged) == (0, 180, 0)
    assert label_fields(fold_run(store, "late")[1]) == label_fields(fold_run(store, "ingest")[1])


def test_a_label_given_at_ingest_conflicts_too(store, tmp_path, night):
    j = int(night["chosen"][0])
    other = (int(night["truth"][j]) + 1) % 3
    with pytest.raises(LabelsError, match=f"'img-{j:05d}' {CLASSES[night['truth'][j]]} -> {CLASSES[other]}"):
        add_labels(store, labels_file(tmp_path, [f"img-{j:05d}"], [other]), ["ingest"])
    [same] = add_labels(store, labels_file(tmp_path, [f"img-{j:05d}"], [int(night["truth"][j])]), ["ingest"])
    assert same.batch is None and same.unchanged == 1 and not store.exists("runs/ingest/labels")


def test_a_crash_halfway_leaves_nothing_visible_and_a_rerun_finishes(store, tmp_path, night, monkeypatch):
    path = labels_file(tmp_path, ids_of(night["chosen"]), night["truth"][night["chosen"]].tolist())
    _, before = fold_run(store, "late")

    def crash(rel, data):
        raise OSError("killed")

    monkeypatch.setattr(store, "create", crash)  # the rows are written, the record is not
    with pytest.raises(OSError):
        add_labels(store, path, ["late"])
    assert store.list("runs/late/labels", ".parquet") and committed(store, "late") == []
    assert fold_run(store, "late")[1].to_dict() == before.to_dict()
    monkeypatch.undo()
    [added] = add_labels(store, path, ["late"])
    assert added.new == 180 and label_fields(fold_run(store, "late")[1]) == label_fields(fold_run(store, "ingest")[1])


def test_a_batch_that_lost_the_race_for_its_place_counts_nothing(store, tmp_path, night, monkeypatch):
    path = labels_file(tmp_path, ids_of(night["chosen"]), night["truth"][night["chosen"]].tolist())
    monkeypatch.setattr(store, "create", lambda rel, data: False)
    with pytest.raises(Exception, match="committed a batch to run late meanwhile: run this one again"):
        add_labels(store, path, ["late"])
    assert committed(store, "late") == []


def test_a_batch_whose_commit_answer_was_lost_counts_once(store, tmp_path, night, monkeypatch):
    path = labels_file(tmp_path, ids_of(night["chosen"]), night["truth"][night["chosen"]].tolist())
    real = store.create
    monkeypatch.setattr(store, "create", lambda rel, data: real(rel, data) and False)  # applied, answer lost
    [added] = add_labels(store, path, ["late"])
    assert [b.batch_id for b in committed(store, "late")] == [added.batch.batch_id]
    monkeypatch.undo()
    [again] = add_labels(store, path, ["late"])
    assert again.already_added and len(committed(store, "late")) == 1


def test_ids_are_matched_across_the_runs_of_a_range(store, tmp_path):
    rng = np.random.default_rng(1)
    for night in (1, 2, 3):
        write_run(store, f"n{night}", night_probs(rng, 50), np.full(50, -1), parts=1, night=night)
    # ids img-00000.. repeat in every night's input, each naming another image: which night's a label
    # is for cannot be told (they went to every run of the range, wrong on all but one)
    with pytest.raises(LabelsError, match=r"2 image_id\(s\) name images of more than one night's input in the "
                       r"range \('img-00003' in n2, n3; 'img-00004' in n2, n3\).*--run-id RUN"):
        add_labels(store, labels_file(tmp_path, ["img-00003", "img-00004"], ["a", "b"]), None,
                   "2026-11-12", "2026-11-13")
    assert not any(store.exists(f"runs/n{night}/labels") for night in (1, 2, 3))
    # night 2's input scored again (another model): the same images, so each of its runs takes the labels
    write_run(store, "n2-again", night_probs(rng, 50), np.full(50, -1), parts=1, night=2)
    added = add_labels(store, labels_file(tmp_path, ["img-00003", "img-00004"], ["a", "b"]), None,
                       "2026-11-12", "2026-11-12")
    assert [a.run_id for a in added] == ["n2", "n2-again"] and all(a.new == 2 for a in added)
    assert fold_run(store, "n1")[1].labelled == 0 and fold_run(store, "n2")[1].labelled == 2


# -- monitoring ------------------------------------------------------------------------------------


def two_class_card(store, version: str = "v2") -> None:
    mv = ModelVersion("cifar10", version)
    store.write_bytes(mv.model_path, b"")
    store.write_json(mv.card_path, {**OLD_CARD, "version": version})


def test_labels_for_a_run_of_a_version_no_longer_in_production_are_added_and_monitored(store, tmp_path):
    two_class_card(store, "v1")
    two_class_card(store, "v2")
    store.write_json(layout.aliases_path("cifar10"), {"production": "v2"})
    rng = np.random.default_rng(2)
    probs = night_probs(rng, 400, k=2)
    write_run(store, "old", probs, np.full(400, -1), classes=["a", "b"], model_version="cifar10/v1")
    truth = calibrated_labels(rng, probs)
    add_labels(store, labels_file(tmp_path, ids_of(range(200)), truth[:200].tolist()), ["old"])
    report = monitor_run(store, "old")
    assert report.row.model_version == "cifar10/v1" and report.row.labelled == 200
    assert report.row.realized_method == "labelled" and report.row.label_batches == 1


def test_labels_arriving_later_keep_the_nights_estimate_and_baseline(store, tmp_path):
    two_class_card(store)
    rng = np.random.default_rng(3)
    nights = {}
    for night in (1, 2, 3):
        probs = night_probs(rng, 1000, k=2)
        nights[night] = probs
        write_run(store, f"n{night}", probs, np.full(1000, -1), classes=["a", "b"], night=night)
        monitor_run(store, f"n{night}")
    third = RunManifest.read(store, "n3")
    baseline_before = history(store, third, 30)
    first = monitor_run(store, "n1").row  # monitored again without new labels: the night's values stay
    # labels that say night 1 was far worse than the reference: a late accuracy_drop
    wrong = 1 - nights[1].argmax(axis=1)[:600]
    add_labels(store, labels_file(tmp_path, ids_of(range(600)), wrong.tolist()), ["n1"])
    report = monitor_run(store, "n1")
    row = report.row
    assert "accuracy_drop" in row.alert_kinds and "accuracy_drop" not in row.night_alert_kinds
    assert row.night_alert_kinds == first.night_alert_kinds and row.night_monitored_at == first.night_monitored_at
    assert row.night_label_free_accuracy == first.night_label_free_accuracy
    assert row.label_free_error == pytest.approx(row.night_label_free_accuracy - row.realized_accuracy)
    after = history(store, third, 30)
    assert [h.tolist() for h in after.history] == [h.tolist() for h in baseline_before.history]
    assert np.array_equal(after.cusum, baseline_before.cusum)
    assert "off by" in format_report(report)


def unlabelled_two_class_night(store, run_id: str, rows: int, seed: int) -> np.ndarray:
    """A committed unlabelled night of a two-class model; returns the label each row must not have."""
    two_class_card(store)
    probs = night_probs(np.random.default_rng(seed), rows, k=2)
    write_run(store, run_id, probs, np.full(rows, -1), classes=["a", "b"])
    return 1 - probs.argmax(axis=1)


def test_label_based_alerts_wait_for_enough_labels(store, tmp_path):
    wrong = unlabelled_two_class_night(store, "big", 5000, seed=4)
    add_labels(store, labels_file(tmp_path, ids_of(range(40)), wrong[:40].tolist()), ["big"])
    report = monitor_run(store, "big")  # 40 labelled: over min_labelled, under 1% of 5,000
    assert "accuracy_drop" not in report.row.alert_kinds and report.row.labels_needed == 50
    assert "too few labels to judge (40 of 50)" in format_report(report)
    add_labels(store, labels_file(tmp_path, ids_of(range(40, 60)), wrong[40:60].tolist()), ["big"])
    assert "accuracy_drop" in monitor_run(store, "big").row.alert_kinds
    looser = monitor_run(store, "big", MonitorConfig(min_labelled=100))
    assert "too few labels to judge (60 of 100)" in format_report(looser)


def test_labels_drawn_some_other_way_are_reported_not_judged(store, tmp_path):
    wrong = unlabelled_two_class_night(store, "r", 1000, seed=6)
    add_labels(store, labels_file(tmp_path, ids_of(range(300)), wrong[:300].tolist()), ["r"], sampling="other")
    report = monitor_run(store, "r")
    assert report.row.realized_method == "not representative" and report.row.realized_accuracy is None
    assert not {"accuracy_drop", "accuracy_divergence"} & set(report.row.alert_kinds)
    assert "labels not representative (drawn as: other)" in format_report(report)


# -- how the sample was drawn ------------------------------------------------------------------------


def uncertain_first(rng, probs: np.ndarray, n: int, power: float = 5.0, floor: float = 0.003) -> np.ndarray:
    """``n`` rows drawn without replacement, the least confident far more likely: weight (1 - top)^power,
    and ``floor`` for every row (a review queue still reaches the confident rows now and then)."""
    weight = (1.0 - probs.max(axis=1).astype(np.float64)) ** power + floor
    return np.sort(rng.choice(len(probs), n, replace=False, p=weight / weight.sum()))


def test_an_uncertain_first_sample_is_reweighted_to_the_nights_accuracy(store, tmp_path):
    rng = np.random.default_rng(7)
    probs = night_probs(rng, 40_000, k=10, sharpness=3.0)
    truth = calibrated_labels(rng, probs)
    night_accuracy = float((probs.argmax(axis=1) == truth).mean())
    sample = uncertain_first(rng, probs, 6000)
    write_run(store, "u", probs, np.full(40_000, -1), classes=[f"c{i}" for i in range(10)], parts=4)
    add_labels(store, labels_file(tmp_path, ids_of(sample), truth[sample].tolist()), ["u"], sampling="uncertain")
    _, stats = fold_run(store, "u")
    raw = stats.correct / stats.labelled
    assert night_accuracy - raw >= 0.20  # the sample is 20 points under the night
    out = realized(stats, ["uncertain"])
    assert out["realized_method"] == "reweighted"
    assert abs(out["realized_accuracy"] - night_accuracy) <= 0.02
    assert out["realized_accuracy_low"] <= night_accuracy <= out["realized_accuracy_high"]
    # read as a random sample, the same labels would be 20 points off
    assert abs(realized(stats, ["random"])["realized_accuracy"] - night_accuracy) >= 0.2


def test_a_sample_that_misses_the_confident_rows_cannot_be_reweighted():
    rng = np.random.default_rng(8)
    probs = night_probs(rng, 5000, k=10)
    truth = calibrated_labels(rng, probs)
    top = probs.max(axis=1)
    lowest = np.argsort(top)[:500]  # strictly the least confident: most rows' confidences never seen
    labels = np.full(5000, -1)
    labels[lowest] = truth[lowest]
    stats = PartitionStats.from_predictions(probs, labels)
    assert reweighted(stats) is None
    assert realized(stats, ["uncertain"])["realized_method"] == "not representative"


def test_the_cli_adds_labels_and_names_every_problem(store, tmp_path, night, capsys):
    from batchml.cli import main

    root = ["--root", store.config.root]
    bad = labels_file(tmp_path, ["img-00001", "nope"], ["a", "kitten"], "bad.csv")
    assert main(["labels", "add", bad, "--run-id", "late", *root]) == 2
    err = capsys.readouterr().err
    assert "nothing was written" in err and "'kitten'" in err
    good = labels_file(tmp_path, ids_of(night["chosen"]), night["truth"][night["chosen"]].tolist())
    assert main(["labels", "add", good, "--run-id", "late", "--sampling", "random", *root]) == 0
    assert "180 new, 0 replaced" in capsys.readouterr().out
    assert main(["labels", "add", good, "--run-id", "late", *root]) == 0
    assert "nothing written" in capsys.readouterr().out
    assert main(["labels", "add", good, "--run-id", "missing", *root]) == 2
    assert "not a committed run" in capsys.readouterr().err


def test_a_card_is_not_needed_to_add_labels(store, tmp_path, night):
    # labels are checked against the run's own classes (its manifest), whatever the registry holds now
    assert not store.exists("models")
    [added] = add_labels(store, labels_file(tmp_path, ["img-00001"], ["c"]), ["late"])
    assert added.new == 1


def test_the_dashboard_shows_the_nights_estimate_beside_the_realized_accuracy_as_labels_arrive(store, tmp_path):
    from batchml.monitoring import read_table
    from batchml.serve.dashboard_data import accuracy_frame
    from batchml.serve.dashboard_views import accuracy_over_time

    two_class_card(store)
    rng = np.random.default_rng(9)
    for night in (1, 2):
        write_run(store, f"n{night}", night_probs(rng, 1000, k=2), np.full(1000, -1), classes=["a", "b"], night=night)
        monitor_run(store, f"n{night}")
    estimate = read_table(store, "runs").set_index("run_id").label_free_accuracy["n1"]
    add_labels(store, labels_file(tmp_path, ids_of(range(500)), [0] * 500), ["n1"])
    monitor_run(store, "n1")
    acc = accuracy_frame(read_table(store, "runs").sort_values("committed_at")).set_index("run_id")
    assert acc.night_estimate["n1"] == estimate and acc.label_coverage["n1"] == 0.5
    assert acc.estimate_error["n1"] == pytest.approx(estimate - acc.realized_accuracy["n1"])
    assert np.isnan(acc.realized_accuracy["n2"]) and acc.label_coverage["n2"] == 0
    assert accuracy_over_time(read_table(store, "runs")) is not None


def test_a_torn_batch_record_is_named_with_its_repair(store, tmp_path, night):
    from batchml.integrity import DamagedFileError

    add_labels(store, labels_file(tmp_path, ids_of(night["chosen"]), night["truth"][night["chosen"]].tolist()),
               ["late"])
    store.write_bytes(layout.label_commit("late", 0), b'{"batch_id": "ab", "del')
    with pytest.raises(DamagedFileError, match=r"commit-00000.json is damaged .*add that batch's labels file again"):
        fold_run(store, "late")


def test_a_torn_batch_rows_file_is_named_by_labels_add_and_by_doctor(store, tmp_path, night):
    from batchml.doctor import check_store
    from batchml.integrity import DamagedFileError

    path = labels_file(tmp_path, ids_of(night["chosen"]), night["truth"][night["chosen"]].tolist())
    [added] = add_labels(store, path, ["late"])
    rows = layout.label_rows("late", added.batch.batch_id)
    store.write_bytes(rows, store.read_bytes(rows)[:100])
    with pytest.raises(DamagedFileError, match=rf"{added.batch.batch_id}.parquet is damaged .*labels file again"):
        add_labels(store, path, ["late"])  # was a pyarrow traceback
    store.write_bytes(layout.label_commit("late", 0), b'{"batch_id": "ab", "del')
    labels_found = lambda: {f.path for f in check_store(store).findings if "/labels/" in f.path}  # noqa: E731
    assert labels_found() == {layout.label_commit("late", 0)}
    store.write_bytes(layout.label_commit("late", 0), json.dumps(added.batch.to_dict()).encode())
    assert labels_found() == {rows}


def test_labels_for_a_run_with_a_torn_predictions_file_name_it_and_write_nothing(store, tmp_path, night, capsys):
    from batchml.cli import main

    rel = layout.run_output("late", "predictions", "part-00001.parquet")
    store.write_bytes(rel, store.read_bytes(rel)[:500])
    before = files_under(store, "runs/late")
    good = labels_file(tmp_path, ids_of(night["chosen"]), night["truth"][night["chosen"]].tolist())
    assert main(["labels", "add", good, "--run-id", "late", "--root", store.config.root]) == 2
    err = capsys.readouterr().err
    assert f"{store.path(rel)} is damaged (not readable as Parquet" in err and "doctor --repair" in err
    assert "unexpected error" not in err and files_under(store, "runs/late") == before


def test_a_utf16_labels_file_is_named_with_how_to_save_it(store, tmp_path, night):
    path = tmp_path / "labels.csv"
    path.write_bytes("image_id,label\nimg-00001,a\n".encode("utf-16"))
    with pytest.raises(BatchmlError, match=r"labels.csv is encoded as UTF-16: save it as CSV in UTF-8"):
        add_labels(store, str(path), ["late"])
