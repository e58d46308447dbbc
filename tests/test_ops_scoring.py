"""Committed runs checked against their input (--append), a model refused before run.json,
damaged inputs named, and ``doctor --repair`` scoring again what was lost: on a real Dask
cluster with a tiny untrained model."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest

from batchml import layout
from batchml.data.ingest import ingest
from batchml.doctor import check_store
from batchml.errors import BatchmlError
from batchml.monitoring import monitor_run, read_table
from batchml.records import ModelCard
from batchml.registry import model_bytes, promote, register
from batchml.repair import repair
from batchml.score.scoring import ScoreConfig, committed_already, score
from tests.conftest import CLASSES, make_image
from tests.ops_fixtures import tiny_card

pytestmark = pytest.mark.slow
MODEL = "tiny/production"


def tiny_model(lambda_layer: bool = False):
    import keras

    layers = [keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), keras.layers.GlobalAveragePooling2D()]
    if lambda_layer:
        layers.append(keras.layers.Lambda(lambda x: x * 2))
    return keras.Sequential([*layers, keras.layers.Dense(len(CLASSES), "softmax")])


@pytest.fixture
def tiny_store(store):
    promote(store, register(store, "tiny", model_bytes(tiny_model()), ModelCard.from_dict(tiny_card())), "production")
    return store


def prefix(tmp_path, n: int = 7):
    folder = tmp_path / "raw"
    for i in range(n):
        (folder / CLASSES[i % 3]).mkdir(parents=True, exist_ok=True)
        (folder / CLASSES[i % 3] / f"{i:03d}.png").write_bytes(make_image(i % 3, i))
    return folder


def predictions(store, run_id):
    return pd.read_parquet(store.path(layout.run_path(run_id, "predictions")))


def test_a_grown_prefix_is_refused_with_the_difference_then_appended_exactly_once(client, tiny_store, tmp_path):
    folder = prefix(tmp_path)
    cfg = ScoreConfig(None, MODEL, "night", images=str(folder), partition_size=3)
    first = score(client, tiny_store, cfg, verbose=False)
    for i in (7, 8):
        (folder / "circle" / f"late{i}.png").write_bytes(make_image(0, i))
    with pytest.raises(BatchmlError, match=r"2 new files \(circle/late7.png, circle/late8.png\).*--append"):
        score(client, tiny_store, cfg, verbose=False)
    with pytest.raises(BatchmlError, match=r"2 new files"):  # refused before any cluster is started too
        committed_already(tiny_store, cfg, verbose=False)
    appended = score(client, tiny_store, ScoreConfig(**{**cfg.__dict__, "append": True}), verbose=False)
    preds = predictions(tiny_store, "night")
    assert appended.rows == len(preds) == 9 and preds.image_id.is_unique
    assert [p["partition"] for p in appended.partitions] == [layout.partition_name(i) for i in range(4)]
    assert set(preds[preds.partition == "part-00003.parquet"].image_id) == {"circle/late7.png", "circle/late8.png"}
    assert appended.committed_at == first.committed_at  # the night keeps its place among the nights
    again = score(client, tiny_store, ScoreConfig(**{**cfg.__dict__, "append": True}), verbose=False)
    assert again.to_dict() == appended.to_dict() and len(predictions(tiny_store, "night")) == 9
    # a rerun with nothing to do is answered without a cluster; --append always goes to ``score``
    assert committed_already(tiny_store, cfg, verbose=False).to_dict() == appended.to_dict()
    assert committed_already(tiny_store, ScoreConfig(**{**cfg.__dict__, "append": True}), verbose=False) is None
    assert committed_already(tiny_store, ScoreConfig(**{**cfg.__dict__, "run_id": "new"}), verbose=False) is None


def test_a_committed_run_refuses_another_partition_size_or_model(client, tiny_store, tmp_path):
    folder = prefix(tmp_path)
    cfg = ScoreConfig(None, MODEL, "night", images=str(folder), partition_size=3)
    score(client, tiny_store, cfg, verbose=False)
    with pytest.raises(BatchmlError, match="partitions of 3 files, not 4"):
        score(client, tiny_store, ScoreConfig(**{**cfg.__dict__, "partition_size": 4}), verbose=False)
    register(tiny_store, "tiny", model_bytes(tiny_model()), ModelCard.from_dict(tiny_card()))
    with pytest.raises(BatchmlError, match=r"scores with model tiny/v1 .* not tiny/v2"):
        score(client, tiny_store, ScoreConfig(**{**cfg.__dict__, "model": "tiny/v2"}), verbose=False)


def test_a_model_safe_mode_refuses_is_a_clear_error_before_run_json(client, store, tmp_path):
    mv = register(store, "tiny", model_bytes(tiny_model(lambda_layer=True)), ModelCard.from_dict(tiny_card()))
    cfg = ScoreConfig(None, str(mv), "lambda", images=str(prefix(tmp_path)), partition_size=3)
    with pytest.raises(BatchmlError, match=r"cannot be loaded for scoring .*Lambda layers"):
        score(client, store, cfg, verbose=False)
    assert not store.exists(layout.run_path("lambda", layout.RUN_SPEC))


def test_a_damaged_input_partition_is_named(client, tiny_store, image_folders):
    ingest(tiny_store, str(image_folders), "shapes", "test", partition_size=30, verbose=False)
    rel = layout.dataset_path("shapes", "part-00001.parquet")
    tiny_store.write_bytes(rel, tiny_store.read_bytes(rel)[:200])
    with pytest.raises(BatchmlError, match=r"input partition .*shapes/part-00001.parquet is damaged.*ingest"):
        score(client, tiny_store, ScoreConfig("shapes", MODEL, "torn"), verbose=False)


def test_doctor_repair_scores_again_what_a_deleted_or_torn_file_lost(client, tiny_store, tmp_path):
    folder = prefix(tmp_path, 9)
    score(client, tiny_store, ScoreConfig(None, MODEL, "night", images=str(folder), partition_size=3), verbose=False)
    monitor_run(tiny_store, "night")
    tiny_store.delete(layout.run_stats("night", "part-00001.parquet"))
    torn = layout.run_output("night", "predictions", "part-00002.parquet")
    tiny_store.write_bytes(torn, tiny_store.read_bytes(torn)[:64])
    lost = layout.run_hashes("night", "part-00000.parquet")  # deleted: later nights' duplicates would miss it
    tiny_store.delete(lost)
    checkup = check_store(tiny_store)
    assert {f.path for f in checkup.findings} == {layout.run_stats("night", "part-00001.parquet"), torn, lost}
    assert repair(tiny_store, checkup, lambda: contextlib.nullcontext(client), verbose=False) == []
    assert check_store(tiny_store).whole
    preds = predictions(tiny_store, "night")
    assert len(preds) == 9 and preds.image_id.is_unique
    assert tiny_store.exists(layout.quarantine_path(tiny_store.list(layout.QUARANTINE)[0], torn))
    assert read_table(tiny_store, "runs").rows.tolist() == [9]
    assert len(pd.read_parquet(tiny_store.path(lost))) == 3


def test_a_fifo_among_the_images_does_not_hang_the_run(client, tiny_store, tmp_path, capsys):
    import os

    folder = prefix(tmp_path, 4)
    os.mkfifo(folder / "circle" / "pipe.png")
    m = score(client, tiny_store, ScoreConfig(None, MODEL, "fifo", images=str(folder), partition_size=3),
              verbose=False)
    assert m.rows == 4
    assert "circle/pipe.png" in capsys.readouterr().err  # said even when quiet


def test_a_repair_or_an_append_keeps_the_segmenting_the_run_was_scored_with(client, tiny_store, tmp_path):
    folder = prefix(tmp_path, 9)
    cfg = ScoreConfig(None, MODEL, "night", images=str(folder), partition_size=3, segment_from_path="{site}/*")
    score(client, tiny_store, cfg, verbose=False)
    monitor_run(tiny_store, "night")
    tiny_store.delete(layout.run_stats("night", "part-00001.parquet"))
    assert repair(tiny_store, check_store(tiny_store), lambda: contextlib.nullcontext(client), verbose=False) == []
    (folder / "circle" / "late.png").write_bytes(make_image(0, 99))
    plain = ScoreConfig(None, MODEL, "night", images=str(folder), partition_size=3, append=True)  # as the error says
    score(client, tiny_store, plain, verbose=False)
    for partition in ("part-00001.parquet", "part-00003.parquet"):
        stats = tiny_store.read_json(layout.run_stats("night", partition))
        assert stats["segment_by"] == "site" and stats["stats"]["segments"], partition
    with pytest.raises(BatchmlError, match=r"segments by --segment-from-path '\{site\}/\*'"):
        score(client, tiny_store, ScoreConfig(**{**cfg.__dict__, "segment_from_path": "{cam}/*"}), verbose=False)


def test_a_repair_rebuilds_lost_listings_and_commits_again_without_the_input(client, tiny_store, tmp_path):
    """run.json and the append records pin a prefix's listing: a repair rebuilds a damaged one from the
    run's rows, so that the run can still be resumed and appended to; a damaged or lost manifest is
    committed again from the statistics, even where the input is gone."""
    folder = prefix(tmp_path, 6)
    cfg = ScoreConfig(None, MODEL, "night", images=str(folder), partition_size=3)
    score(client, tiny_store, cfg, verbose=False)
    (folder / "circle" / "late.png").write_bytes(make_image(0, 50))
    score(client, tiny_store, ScoreConfig(**{**cfg.__dict__, "append": True}), verbose=False)
    monitor_run(tiny_store, "night")
    spec, record = layout.run_path("night", layout.RUN_SPEC), layout.run_append("night", 0)
    pinned = tiny_store.read_json(spec)["inputs"], tiny_store.read_json(record)["inputs"]
    for rel in (spec, record):
        tiny_store.write_bytes(rel, tiny_store.read_bytes(rel)[:40])
    checkup = check_store(tiny_store)
    assert {f.path for f in checkup.findings} == {spec, record}
    assert repair(tiny_store, checkup, lambda: contextlib.nullcontext(client), verbose=False) == []
    assert check_store(tiny_store).whole
    assert (tiny_store.read_json(spec)["inputs"], tiny_store.read_json(record)["inputs"]) == pinned
    assert score(client, tiny_store, cfg, verbose=False).rows == 7  # resumable: nothing changed, nothing to do
    (folder / "square" / "later.png").write_bytes(make_image(1, 51))
    assert score(client, tiny_store, ScoreConfig(**{**cfg.__dict__, "append": True}), verbose=False).rows == 8

    committed = tiny_store.read_json(layout.run_path("night", layout.RUN_MANIFEST))
    for lose in (lambda rel: tiny_store.write_bytes(rel, b'{"run_id": "ni'), tiny_store.delete):
        lose(layout.run_path("night", layout.RUN_MANIFEST))
        folder.rename(tmp_path / "gone")  # the night's images are gone by the time the damage is found
        checkup = check_store(tiny_store)
        assert [f.path for f in checkup.findings] == [layout.run_path("night", layout.RUN_MANIFEST)]
        assert repair(tiny_store, checkup, lambda: contextlib.nullcontext(client), verbose=False) == []
        again = tiny_store.read_json(layout.run_path("night", layout.RUN_MANIFEST))
        assert again["rows"] == 8 and again["partitions"] == committed["partitions"]
        assert check_store(tiny_store).whole
        (tmp_path / "gone").rename(folder)
    preds = predictions(tiny_store, "night")
    assert len(preds) == 8 and preds.image_id.is_unique
