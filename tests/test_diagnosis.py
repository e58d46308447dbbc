"""Alerts that say what broke and where: input properties, duplicates, novel images, segments, and
the causes ranked. Synthetic statistics, no Dask, no Keras."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batchml.data.health import PROPERTIES, InputHealth
from batchml.monitoring import MonitorConfig, RunReport, evaluate, format_report
from batchml.records import Alert, ModelCard, MonitoringRow, RunManifest
from batchml.stats import PartitionStats

K = 3
CLASSES = ["a", "b", "c"]


def _values(rng, n: int, saturation: float = 0.3, sharpness: float = 300.0) -> np.ndarray:
    values = np.column_stack([np.full(n, 32.0), np.full(n, 32.0), np.ones(n), rng.normal(2500, 300, n),
                              rng.uniform(0.3, 0.6, n), rng.uniform(0.15, 0.3, n), rng.normal(saturation, 0.05, n),
                              rng.uniform(0.1, 0.3, n), rng.lognormal(np.log(sharpness), 0.4, n),
                              rng.uniform(0, 0.05, n), rng.normal(0.05, 0.1, n), rng.normal(-0.3, 0.5, n)])
    assert values.shape[1] == len(PROPERTIES)
    return values


def _health(rng, n: int, **moved) -> InputHealth:
    zeros = np.zeros(n, np.int64)
    return InputHealth(_values(rng, n, **moved), zeros, zeros + 2, zeros, zeros,
                       rng.integers(0, 2**63, n, dtype=np.uint64), rng.integers(0, 2**63, n, dtype=np.uint64))


def _card(rng) -> ModelCard:
    reference = PartitionStats(K, rows=5000, **_health(rng, 5000).counts())
    health = {"dataset": "train", "split": "train", "rows": 5000, "properties": list(PROPERTIES),
              **{f: getattr(reference, f).tolist() for f in ("health_hist", "mode_counts", "channel_counts",
                                                               "orientation_counts", "format_counts")}}
    novelty = {"method": "mahalanobis", "threshold": 10.0, "validation_rate": 0.05,
               "validation_hist": np.histogram(rng.gamma(4, 0.15, 5000), np.linspace(0, 4, 41))[0].tolist()}
    return ModelCard.from_dict({"classes": CLASSES, "reference": {"accuracy": 0.8, "predicted_counts": [1000] * K},
                                "metrics": {"validation": {}}, "input_health": health, "novelty": novelty})


def _night(rng, n: int, novel: float = 0.05, segment: str | None = None, **moved) -> PartitionStats:
    probs = rng.dirichlet(np.full(K, 0.3), n) * 0.4 + np.eye(K)[rng.integers(0, K, n)] * 0.6
    scores = np.where(rng.random(n) < novel, rng.uniform(1.2, 3.0, n), rng.uniform(0.0, 0.95, n))
    stats = PartitionStats.from_predictions(probs, np.full(n, -1), health=_health(rng, n, **moved), novelty=scores)
    if segment:
        stats.segments = {segment: PartitionStats.from_dict({**stats.to_dict(), "segments": {}})}
    return stats


RUN = RunManifest.from_dict({"run_id": "night", "dataset": "d", "model_version": "m/v1", "committed_at": "1",
                             "classes": CLASSES, "max_error_ratio": 0.01})


def _kinds(report: RunReport) -> list[str]:
    return [a.kind for a in report.alerts]


def test_a_clean_night_raises_no_input_or_novelty_alert():
    rng = np.random.default_rng(1)
    card = _card(rng)
    quiet = [_kinds(evaluate(RUN, _night(rng, 2000), card)) for _ in range(20)]
    assert not any({"input_shift", "novel_inputs"} & set(k) for k in quiet), quiet


def test_a_grey_camera_is_named_by_its_property_and_figures():
    rng = np.random.default_rng(2)
    report = evaluate(RUN, _night(rng, 2000, saturation=0.01), _card(rng))
    first = report.alerts[0]
    assert first.kind == "input_shift" and first.cause == "input properties" and first.rank == 1
    assert "saturation: median 0.0" in first.message and "against 0.3" in first.message


def test_images_unlike_the_training_data_alert_and_are_not_counted_as_right():
    rng = np.random.default_rng(3)
    card = _card(rng)
    clean, foreign = (evaluate(RUN, _night(rng, 2000, novel=share), card) for share in (0.05, 0.45))
    assert "novel_inputs" in _kinds(foreign) and "novel_inputs" not in _kinds(clean)
    alert = next(a for a in foreign.alerts if a.kind == "novel_inputs")
    assert alert.message.startswith("4") and "unlike the training data" in alert.message
    # the foreign night's confident predictions of novel images no longer read as right
    assert foreign.row.expected_accuracy < clean.row.expected_accuracy - 0.25


def _hashes(rng, n: int, copies: float = 0.0, segment=None) -> pd.DataFrame:
    content = rng.integers(0, 2**63, n, dtype=np.uint64)
    repeat = rng.random(n) < copies
    content[repeat] = content[rng.integers(0, max(1, int(n * 0.1)), repeat.sum())]
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "content_hash": content,
                         "perceptual_hash": rng.integers(0, 2**63, n, dtype=np.uint64),
                         "predicted": rng.integers(0, K, n), "segment": segment})


def test_a_partly_duplicated_batch_alerts_with_an_example_and_a_replay_of_a_recent_night_too():
    rng = np.random.default_rng(4)
    card, stats = _card(rng), _night(rng, 2000)
    doubled = evaluate(RUN, stats, card, hashes=_hashes(rng, 2000, copies=0.3))
    assert doubled.alerts[0].kind == "duplicates" and "copy of" in doubled.alerts[0].message
    assert doubled.row.duplicate_within > 400 and sum(doubled.row.predicted_counts_unique) < 1600
    earlier = _hashes(rng, 2000)
    replay = evaluate(RUN, stats, card, hashes=earlier.assign(image_id=lambda d: "new-" + d.image_id),
                      recent={"night-1": earlier})
    assert replay.alerts[0].kind == "duplicates" and "(run night-1)" in replay.alerts[0].message
    assert "duplicates" not in _kinds(evaluate(RUN, stats, card, hashes=_hashes(rng, 2000),
                                               recent={"night-1": _hashes(rng, 2000)}))


def test_one_broken_camera_of_five_is_named_even_where_the_night_dilutes_it():
    rng = np.random.default_rng(5)
    cameras = [_night(rng, 400, segment=f"cam-{i}", **({"sharpness": 20.0} if i == 2 else {})) for i in range(5)]
    night = PartitionStats.total(cameras, K)
    report = evaluate(RUN, night, _card(rng), segment_by="camera")
    shift = next(a for a in report.alerts if a.kind == "input_shift")
    assert shift.segment == "camera=cam-2" and shift.message.startswith("in camera=cam-2: ")
    assert "sharpness" in shift.message
    assert len(report.segments) == 5 and {s.segment for s in report.segments} == {f"cam-{i}" for i in range(5)}
    assert "cam-2" in format_report(report)


def test_clean_cameras_raise_no_segment_alert():
    rng = np.random.default_rng(6)
    card = _card(rng)
    for _ in range(5):
        night = PartitionStats.total([_night(rng, 400, segment=f"cam-{i}") for i in range(5)], K)
        assert not [a for a in evaluate(RUN, night, card, segment_by="camera").alerts if a.segment], "false alarm"


def test_an_alert_no_segment_is_judged_by_is_named_where_its_cause_is():
    from batchml.monitoring.segments import locate

    def alert(kind, segment=None):
        return Alert.from_dict({"run_id": "r", "kind": kind, "severity": "warning", "statistic": 0.5,
                                "threshold": 0, "message": kind, "segment": segment})

    raised = {"cam-0": [], "cam-1": [alert("sustained_shift")], "cam-2": []}
    out = {a.kind: a for a in locate([alert("new_shift"), alert("sustained_shift"), alert("output_shift")],
                                     raised, "camera")}
    # the mix against the recent nights is not judged per camera: it moved where the mix against the reference did
    assert out["new_shift"].segment == "camera=cam-1" and out["new_shift"].message == "in camera=cam-1: new_shift"
    assert out["sustained_shift"].segment == "camera=cam-1"
    assert out["output_shift"].segment is None  # another cause: not borrowed
    everywhere = {v: [alert("sustained_shift")] for v in raised}
    assert [a.segment for a in locate([alert("new_shift"), alert("sustained_shift")], everywhere, "camera")] \
        == [None, None]  # every camera moved: the whole night, no segment to name


def test_the_upstream_cause_leads_the_ranking():
    from batchml.monitoring.rules import ranked

    row = MonitoringRow.from_dict({"run_id": "r", "novelty_ks": 0.3})

    def alert(kind, statistic=0.0):
        return Alert.from_dict({"run_id": "r", "kind": kind, "severity": "warning", "statistic": statistic,
                                "threshold": 0, "message": kind})

    order = ranked([alert("expected_accuracy_drop"), alert("sustained_shift"), alert("duplicates")], row)
    assert [a.kind for a in order] == ["duplicates", "sustained_shift", "expected_accuracy_drop"]
    # input properties and novel images both move when the images change: the properties lead
    # unless most images are unlike the training data, further than the properties moved
    assert ranked([alert("novel_inputs", 0.4), alert("input_shift", 0.3)], row)[0].kind == "input_shift"
    assert ranked([alert("novel_inputs", 0.9), alert("input_shift", 0.95)], row)[0].kind == "input_shift"
    assert ranked([alert("novel_inputs", 0.9), alert("input_shift", 0.6)], row)[0].kind == "novel_inputs"


def test_the_report_leads_with_what_changed():
    rng = np.random.default_rng(7)
    text = format_report(evaluate(RUN, _night(rng, 2000, saturation=0.01), _card(rng)))
    lines = text.splitlines()
    assert lines[1].startswith("WARNING: input properties: the images differ from the training data")


@pytest.mark.parametrize("kind", ["input_shift", "duplicates", "novel_inputs"])
def test_rules_stay_quiet_without_their_statistics(kind):
    from batchml.monitoring import rules

    row = MonitoringRow.from_dict({"run_id": "r", "rows": 100})
    assert getattr(rules, kind)(row, MonitorConfig()) is None


def test_a_segments_report_holds_its_figures_and_the_alerts_that_name_it():
    from batchml.errors import BatchmlError
    from batchml.monitoring import segment_report

    rng = np.random.default_rng(8)
    cameras = [_night(rng, 400, segment=f"cam-{i}", **({"saturation": 0.01} if i == 1 else {})) for i in range(5)]
    report = evaluate(RUN, PartitionStats.total(cameras, K), _card(rng), segment_by="camera")
    one = segment_report(report, "cam-1")
    assert one.row.segment == "cam-1" and [a.kind for a in one.alerts] == ["input_shift"]
    assert format_report(one).startswith("run night (camera=cam-1): 400 predictions")
    assert segment_report(report, "cam-3").alerts == []
    with pytest.raises(BatchmlError, match=r"no segment 'cam-9'.*cam-0, cam-1"):
        segment_report(report, "cam-9")


def test_a_segmented_run_whose_segments_are_too_small_to_judge_is_not_said_unsegmented():
    from batchml.errors import BatchmlError
    from batchml.monitoring import segment_report

    rng = np.random.default_rng(8)
    cameras = [_night(rng, 50, segment=f"cam-{i}") for i in range(3)]
    report = evaluate(RUN, PartitionStats.total(cameras, K), _card(rng), segment_by="camera")
    with pytest.raises(BatchmlError, match=r"no segment 'cam-1'.*fewer than segment_min_rows rows \(200"):
        segment_report(report, "cam-1")


def test_a_short_night_and_a_camera_gone_dark_are_named_and_ordinary_nights_are_not():
    """Images arrive late, and a camera stops sending: neither moves any statistic of the images that
    did arrive. Tonight against the smallest of the recent clean nights, for the run and each segment."""
    from batchml.monitoring.baseline import Baseline

    rng = np.random.default_rng(12)
    sizes = [900, 1000, 1100, 950, 1050, 980]  # ordinary variation
    cams = [{"cam-a": n // 3, "cam-b": n // 3, "cam-c": n - 2 * (n // 3)} for n in sizes]

    def night(per_camera: dict[str, int]) -> RunReport:
        cameras = [_night(rng, n, segment=c) for c, n in per_camera.items()]
        return evaluate(RUN, PartitionStats.total(cameras, K), _card(rng),
                        Baseline(sizes=sizes, runs=[f"n{i}" for i in range(6)], segment_sizes=cams),
                        segment_by="camera")

    assert "volume_drop" not in _kinds(night({"cam-a": 150, "cam-b": 150, "cam-c": 150}))  # 450: half of 900
    assert "volume_drop" not in _kinds(night({"cam-a": 300, "cam-b": 300, "cam-c": 300}))
    short = night({"cam-a": 100, "cam-b": 100, "cam-c": 100})
    whole = [a for a in short.alerts if a.kind == "volume_drop" and a.segment is None]
    assert len(whole) == 1 and whole[0].cause == "missing inputs" and whole[0].rank == 1
    assert "300 images tonight, against 900 to 1,100" in whole[0].message and "--append" in whole[0].message
    dark = night({"cam-a": 330, "cam-b": 330})  # cam-c sent nothing
    gone = [a for a in dark.alerts if a.kind == "volume_drop"]
    assert [a.segment for a in gone] == ["camera=cam-c"]
    assert gone[0].message.startswith("camera=cam-c: 0 images tonight, against 300 to 368")
    few = Baseline(sizes=sizes[:4], segment_sizes=cams[:4])  # too few nights to know what is ordinary
    assert "volume_drop" not in _kinds(evaluate(RUN, _night(rng, 10), _card(rng), few))


def test_copies_in_the_segments_folded_into_other_are_counted_there():
    """The hashes keep each row's own segment value; the statistics fold the values beyond the
    largest into "(other)": the copies there were matched to no segment."""
    rng = np.random.default_rng(13)
    cfg = MonitorConfig(segments_max=2)
    sites = [f"s{i}" for i in range(6)]
    night = PartitionStats.total([_night(rng, 400 if i < 2 else 300, segment=s) for i, s in enumerate(sites)], K)
    hashes = pd.concat([_hashes(rng, 400 if i < 2 else 300, copies=0.0 if i < 2 else 0.5, segment=s)
                        for i, s in enumerate(sites)], ignore_index=True)
    hashes["image_id"] = [f"i{i}" for i in range(len(hashes))]
    report = evaluate(RUN, night, _card(rng), cfg=cfg, hashes=hashes, segment_by="site")
    other = next(s for s in report.segments if s.segment == "(other)")
    assert other.rows == 1200 and other.duplicate_within > 200
    assert all(s.duplicate_within in (0, None) for s in report.segments if s.segment != "(other)")
