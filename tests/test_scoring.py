import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchml.data import datasets
from batchml.data.ingest import ingest
from batchml.errors import BatchmlError
from batchml.score.scoring import ScoreConfig, model_loads, score
from tests.conftest import CLASSES, copy_store, make_image, write_class_folders

MODEL = "shapes/production"


@pytest.fixture
def run_store(trained_store, tmp_path):
    return copy_store(trained_store, tmp_path / "store")


def files_under(store, rel):
    root = store.path(rel)
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.slow
def test_every_input_row_gets_exactly_one_prediction(client, run_store):
    m = score(client, run_store, ScoreConfig("shapes-test", MODEL, "r1"), verbose=False)
    preds = pd.read_parquet(run_store.path("runs/r1/predictions"))
    inputs = pd.concat(datasets.read_partition(run_store, "shapes-test", p["name"]).to_pandas()
                       for p in datasets.read_manifest(run_store, "shapes-test").partitions)
    assert m.rows == len(preds) == 60 and m.errors == 0
    assert sorted(preds.image_id) == sorted(inputs.image_id)
    assert preds.image_id.is_unique
    assert {"image_id", "predicted", "predicted_class", "probability", "probabilities", "label",
            "model_version", "run_id", "partition"} <= set(preds.columns)
    assert np.allclose(np.stack(preds.probabilities).max(axis=1), preds.probability)
    assert (preds.model_version == m.model_version).all() and len(m.partitions) == 4


@pytest.mark.slow
def test_the_model_is_loaded_once_per_worker_not_per_task(client, run_store):
    score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-loads"), verbose=False)
    key = f"{run_store.config.root}|shapes/v1"
    loads = [per_worker.get(key, 0) for per_worker in client.run(model_loads).values()]
    assert len(loads) == 2 and sum(loads) >= 1  # 4 partitions over 2 workers
    assert max(loads) == 1


@pytest.mark.slow
def test_rerunning_a_committed_run_writes_nothing(client, run_store):
    score(client, run_store, ScoreConfig("shapes-test", MODEL, "r2"), verbose=False)
    before = files_under(run_store, "runs/r2")
    score(client, run_store, ScoreConfig("shapes-test", MODEL, "r2"), verbose=False)
    assert files_under(run_store, "runs/r2") == before


@pytest.mark.slow
def test_an_interrupted_run_resumes_with_the_missing_partitions_only(client, run_store):
    score(client, run_store, ScoreConfig("shapes-test", MODEL, "r3"), verbose=False)
    for rel in ("manifest.json", "stats/part-00001.json", "predictions/part-00001.parquet",
                "stats/part-00003.json"):  # a job killed mid-run: two partitions unfinished
        os.remove(run_store.path(f"runs/r3/{rel}"))
    kept = {k: v for k, v in files_under(run_store, "runs/r3").items() if "00001" not in k and "00003" not in k}
    m = score(client, run_store, ScoreConfig("shapes-test", MODEL, "r3"), verbose=False)
    after = files_under(run_store, "runs/r3")
    assert all(after[k] == v for k, v in kept.items())  # finished partitions untouched
    preds = pd.read_parquet(run_store.path("runs/r3/predictions"))
    assert m.rows == len(preds) == 60 and preds.image_id.is_unique


def _ingest_with_corrupt(store, tmp_path, n_good: int, n_bad: int, name: str):
    folder = tmp_path / name / "test" / "circle"
    folder.mkdir(parents=True)
    for i in range(n_good):
        (folder / f"g{i:03d}.png").write_bytes(make_image(0, i))
    for i in range(n_bad):
        (folder / f"z{i:03d}.png").write_bytes(make_image(0, i)[:60])  # truncated
    ingest(store, str(tmp_path / name), name, "test", partition_size=10, classes=CLASSES, verbose=False)


@pytest.mark.slow
def test_corrupt_images_become_error_rows_and_partitions_complete(client, run_store, tmp_path):
    _ingest_with_corrupt(run_store, tmp_path, 19, 1, "one-bad")
    # one bad in 20 is 5%: above the default 1%, so the run fails loudly and is not committed
    with pytest.raises(BatchmlError, match=r"1 of 20 images could not be decoded.*not committed"):
        score(client, run_store, ScoreConfig("one-bad", MODEL, "bad"), verbose=False)
    assert not run_store.exists("runs/bad/manifest.json")
    m = score(client, run_store, ScoreConfig("one-bad", MODEL, "bad", max_error_ratio=0.1), verbose=False)
    errors = pd.read_parquet(run_store.path("runs/bad/errors"))
    assert (m.rows, m.errors) == (19, 1)
    assert errors.image_id.tolist() == ["test/circle/z000.png"]
    assert "cannot decode" in errors.reason[0] and errors.partition[0] == "part-00001.parquet"


@pytest.mark.slow
def test_an_empty_partition_is_a_clear_error(client, run_store):
    run_store.write_parquet("images/shapes-test/part-00002.parquet", pa.table(
        {"image_id": pa.array([], pa.string()), "image": pa.array([], pa.binary()), "label": pa.array([], pa.int16())}))
    with pytest.raises(BatchmlError, match=r"part-00002.parquet of dataset 'shapes-test' is empty"):
        score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-empty"), verbose=False)
    assert not run_store.exists("runs/r-empty/manifest.json")


@pytest.mark.slow
def test_a_run_id_cannot_be_reused_for_another_dataset(client, run_store):
    score(client, run_store, ScoreConfig("shapes-test", MODEL, "r4"), verbose=False)
    with pytest.raises(BatchmlError, match=r"run 'r4' scores dataset 'shapes-test'"):
        score(client, run_store, ScoreConfig("shapes-train", MODEL, "r4"), verbose=False)


@pytest.mark.slow
def test_labels_of_other_classes_are_refused_before_the_run_is_written(client, run_store, tmp_path):
    from tests.conftest import write_class_folders

    write_class_folders(tmp_path / "other", {"test": 2}, classes=["cat", "dog", "emu"])
    ingest(run_store, str(tmp_path / "other"), "animals", "test", verbose=False)
    with pytest.raises(BatchmlError, match=r"score with a model trained on these classes"):
        score(client, run_store, ScoreConfig("animals", MODEL, "r5"), verbose=False)
    assert not run_store.exists("runs/r5/run.json")  # the run id is not tied to the wrong model


@pytest.mark.slow
def test_a_label_outside_the_models_classes_fails_the_run_with_a_clear_error(client, run_store):
    table = datasets.read_partition(run_store, "shapes-test", "part-00001.parquet")
    labels = table["label"].to_pylist()
    labels[3] = 7  # the model knows 3 classes
    run_store.write_parquet("images/shapes-test/part-00001.parquet",
                            table.set_column(2, "label", pa.array(labels, pa.int16())))
    with pytest.raises(BatchmlError, match=r"part-00001.parquet of 'shapes-test' has labels \[7\] outside"):
        score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-label"), verbose=False)
    assert not run_store.exists("runs/r-label/manifest.json")


@pytest.mark.slow
@pytest.mark.parametrize(("change", "message"), [
    ({"partition_size": 0}, "--partition-size must be at least 1"),
    ({"batch_size": -1}, "--batch-size must be at least 1"),
    ({"max_error_ratio": 1.5}, "--max-error-ratio is a share"),
    # every file of the run is named after it: a long id was scored, then its monitoring could not be written
    ({"run_id": "n" * 201}, "run name n+... is 201 characters long: keep it to 200"),
])
def test_settings_that_cannot_work_are_refused_before_anything_is_written(run_store, tmp_path, change, message):
    cfg = ScoreConfig(None, MODEL, images=str(tmp_path), **{"run_id": "r-bad", **change})
    before = run_store.list("runs")
    with pytest.raises(BatchmlError, match=message):
        score(None, run_store, cfg, verbose=False)
    assert run_store.list("runs") == before


def test_a_prefix_holding_a_file_name_that_is_not_utf8_is_a_clear_error(tmp_path):
    from batchml.data.inputs import plan_prefix

    (tmp_path / "ok.png").write_bytes(make_image(0, 1))
    with open(os.fsencode(tmp_path) + b"/na\xefve.png", "wb") as f:
        f.write(make_image(0, 2))
    with pytest.raises(BatchmlError, match=r"na\\\\xefve.png.* is not valid UTF-8"):
        plan_prefix(str(tmp_path), {}, 10)


@pytest.mark.slow
def test_resuming_an_images_run_with_another_partition_size_is_refused(client, run_store, tmp_path):
    from tests.conftest import write_class_folders

    folder = write_class_folders(tmp_path / "raw", {"test": 7}) / "test"  # 21 files
    cfg = ScoreConfig(None, MODEL, "resized", images=str(folder), partition_size=5)
    score(client, run_store, cfg, verbose=False)
    for rel in ("manifest.json", "stats/part-00004.json"):  # as if the job had died mid-run
        run_store.delete(f"runs/resized/{rel}")
    with pytest.raises(BatchmlError, match=r"partitions of 5 files, not 4: resume it with --partition-size 5"):
        score(client, run_store, ScoreConfig(None, MODEL, "resized", images=str(folder), partition_size=4),
              verbose=False)
    m = score(client, run_store, cfg, verbose=False)
    preds = pd.read_parquet(run_store.path("runs/resized/predictions"))
    assert m.rows == len(preds) == 21 and preds.image_id.is_unique


@pytest.mark.slow
def test_a_prefix_of_raw_files_is_scored_without_ingest(client, run_store, tmp_path):
    from tests.conftest import write_class_folders

    folder = write_class_folders(tmp_path / "raw", {"test": 7})  # test/<class>/NNN.png
    (folder / "test" / "stray.png").write_bytes(make_image(1, 99, size=64))  # unlabelled, another size
    (folder / "test" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    cfg = ScoreConfig(None, MODEL, "raw", images=str(folder / "test"), partition_size=5, max_error_ratio=0.1)
    m = score(client, run_store, cfg, verbose=False)
    preds = pd.read_parquet(run_store.path("runs/raw/predictions"))
    errors = pd.read_parquet(run_store.path("runs/raw/errors"))
    assert (m.rows, m.errors, len(m.partitions)) == (22, 1, 5)
    assert errors.image_id.tolist() == ["broken.jpg"]
    assert sorted(preds.image_id)[:2] == ["circle/000.png", "circle/001.png"]
    labels = preds.set_index("image_id").label
    assert labels["square/003.png"] == 1 and pd.isna(labels["stray.png"])
    assert score(client, run_store, cfg, verbose=False) == m  # committed: a rerun changes nothing

    (folder / "test" / "late.png").write_bytes(make_image(0, 7))
    run_store.delete("runs/raw/manifest.json")
    with pytest.raises(BatchmlError, match="changed since run 'raw' started"):
        score(client, run_store, cfg, verbose=False)


@pytest.mark.slow
def test_the_manifest_records_the_batch_size_and_stage_timings_of_each_partition(client, run_store):
    m = score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-batch", batch_size=8), verbose=False)
    assert m.batch_size == 8 and m.batch_sizes_used == [8]
    for p in m.partitions:
        assert p["batch_size"] == 8
        assert {"read", "decode", "load", "queue", "predict", "write"} <= set(p["seconds"])
    auto = score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-auto"), verbose=False)
    assert auto.batch_size == "auto" and auto.batch_sizes_used == [512]  # no GPU here


def test_a_card_whose_bias_correction_does_not_fit_its_classes_is_refused_before_scoring():
    from batchml.layout import ModelVersion
    from batchml.records import ModelCard
    from batchml.score.run import _bias_correction

    mv = ModelVersion("shapes", "v1")
    card = ModelCard.from_dict({"classes": ["a", "b", "c"], "calibration": {"temperature": 1.0}})
    assert _bias_correction(card, mv) is None  # a card from before BCTS: the cells are temperature-scaled
    for bcts, problem in (({"temperature": 1.0, "bias": [0.0, 0.0]}, "2 biases for 3 classes"),
                          ({"temperature": 1.0}, "malformed")):
        card = ModelCard.from_dict({"classes": ["a", "b", "c"], "calibration": {"temperature": 1.0, "bcts": bcts}})
        with pytest.raises(BatchmlError, match=f"shapes/v1: calibration.bcts .*{problem}"):
            _bias_correction(card, mv)


def _run_stats(store, run_id):
    from batchml.stats import PartitionStats

    parts = [store.read_json(f"runs/{run_id}/stats/{n}") for n in store.list(f"runs/{run_id}/stats", ".json")]
    return parts, PartitionStats.total([PartitionStats.from_dict(p["stats"]) for p in parts], 3)


@pytest.mark.slow
def test_scoring_writes_novelty_orientation_hashes_and_input_health(client, run_store):
    from batchml.registry import read_card, resolve

    card = read_card(run_store, resolve(run_store, MODEL))
    assert card.novelty["threshold"] > 0 and card.input_health["rows"] > 0  # fitted when trained
    score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-diag"), verbose=False)
    preds = pd.read_parquet(run_store.path("runs/r-diag/predictions"))
    hashes = pd.read_parquet(run_store.path("runs/r-diag/hashes"))
    assert preds.novelty.notna().all() and (preds.novelty >= 0).all() and preds.exif_orientation.isna().all()
    assert sorted(hashes.image_id) == sorted(preds.image_id) and hashes.content_hash.dtype == np.uint64
    assert hashes.content_hash.is_unique  # the synthetic images are all different
    _, total = _run_stats(run_store, "r-diag")
    assert total.has("health_hist") and total.has("novelty_hist") and total.has("predicted_counts_unique")
    assert total.novel_rows == int((preds.novelty > 1).sum()) and total.duplicate_rows == 0


@pytest.mark.slow
def test_a_novelty_reference_of_a_method_unknown_here_is_scored_without_and_said_so(client, run_store, capsys):
    from batchml.registry import resolve

    mv = resolve(run_store, MODEL)
    card = run_store.read_json(mv.card_path)
    run_store.write_json(mv.card_path, {**card, "novelty": {**card["novelty"], "method": "flow-2027"}})
    score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-newer"), verbose=False)
    assert "method 'flow-2027', which this batchml does not know" in capsys.readouterr().err
    preds = pd.read_parquet(run_store.path("runs/r-newer/predictions"))
    assert len(preds) == 60 and preds.novelty.isna().all()


@pytest.mark.slow
def test_without_diagnostics_the_new_statistics_read_as_absent(client, run_store):
    score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-plain", diagnostics=False), verbose=False)
    preds = pd.read_parquet(run_store.path("runs/r-plain/predictions"))
    assert preds.novelty.isna().all() and not run_store.exists("runs/r-plain/hashes")
    _, total = _run_stats(run_store, "r-plain")
    assert not total.has("health_hist") and not total.has("novelty_hist") and total.rows == 60


@pytest.mark.slow
def test_segments_from_the_path_keep_their_own_statistics_and_labels(client, run_store, tmp_path):
    from tests.conftest import write_class_folders

    for camera, n in (("cam-a", 4), ("cam-b", 2)):
        write_class_folders(tmp_path / "feed" / camera, {"x": n})  # cam-a/x/<class>/NNN.png
    (tmp_path / "feed" / "cam-b" / "x" / "circle" / "copy.png").write_bytes(
        (tmp_path / "feed" / "cam-b" / "x" / "circle" / "000.png").read_bytes())  # an exact duplicate
    cfg = ScoreConfig(None, MODEL, "r-seg", images=str(tmp_path / "feed"), partition_size=10,
                      segment_from_path="{camera}/**")
    m = score(client, run_store, cfg, verbose=False)
    preds = pd.read_parquet(run_store.path("runs/r-seg/predictions")).set_index("image_id")
    assert m.rows == 19 and preds.segment.value_counts().to_dict() == {"cam-a": 12, "cam-b": 7}
    assert preds.label["cam-b/x/square/001.png"] == 1  # class folders still give labels
    parts, total = _run_stats(run_store, "r-seg")
    assert {p["segment_by"] for p in parts} == {"camera"}
    assert {v: s.rows for v, s in total.segments.items()} == {"cam-a": 12, "cam-b": 7}
    assert total.segments["cam-b"].labelled == 7 and total.segments["cam-b"].has("novelty_hist")
    assert total.duplicate_rows == total.segments["cam-b"].duplicate_rows == 1  # same partition (sorted paths)
    assert sum(s.correct for s in total.segments.values()) == total.correct


@pytest.mark.slow
def test_segmenting_by_a_column_the_input_lacks_names_the_columns_it_has(client, run_store, tmp_path):
    with pytest.raises(BatchmlError, match="no column 'camera' to segment by"):
        score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-nocol", segment_by="camera"), verbose=False)
    assert not run_store.exists("runs/r-nocol/run.json")  # not pinned: the typo does not hold the run id
    assert score(client, run_store, ScoreConfig("shapes-test", MODEL, "r-nocol"), verbose=False).rows == 60
    folder = write_class_folders(tmp_path / "raw", {"test": 2})
    with pytest.raises(BatchmlError, match=r"a prefix of files carries no columns.*--segment-from-path"):
        score(client, run_store, ScoreConfig(None, MODEL, "r-files", images=str(folder), segment_by="camera"),
              verbose=False)
    assert not run_store.exists("runs/r-files/run.json")


@pytest.mark.slow
def test_a_file_replaced_after_the_listing_fails_its_partition_and_the_rerun_says_what_to_do(
        client, run_store, tmp_path):
    from batchml.data import inputs

    folder = write_class_folders(tmp_path / "raw", {"test": 4}) / "test"
    cfg = ScoreConfig(None, MODEL, "r-replaced", images=str(folder), partition_size=4)
    plan = inputs.plan_prefix(str(folder), {}, 4)  # listed, then a file is replaced before it is read
    (folder / "circle" / "002.png").write_bytes(b"\x89PNG half uploaded")
    with pytest.raises(BatchmlError, match=r"1 file\(s\) under .* changed while run 'r-replaced' read them, "
                                           r"e.g. circle/002.png: .* bytes when the run listed it, 18 now"):
        score(client, run_store, cfg, verbose=False, plan=plan)
    assert not run_store.exists("runs/r-replaced/manifest.json")
    assert not run_store.exists("runs/r-replaced/stats/part-00000.json")
    for append in (False, True):  # the run cannot score that file as it listed it: no --append either
        with pytest.raises(BatchmlError, match=r"1 changed in size \(circle/002.png\); 1 of them .* not scored "
                                               r"yet.*put those files back as they were"):
            score(client, run_store, replace(cfg, append=append), verbose=False)
