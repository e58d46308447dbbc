"""Inputs, aliases and command-line errors of issue 24 that need no cluster: FIFOs and other
files among --images, one file given as a prefix, aliases outside models/, damaged cards,
BrokenPipe, reversed date ranges, transparent pixels."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batchml import layout
from batchml.cli import main
from batchml.data.images import Preprocessing, decode_image
from batchml.data.inputs import listing_change, plan_prefix, skipped_notices, unknown_label_folders
from batchml.errors import BatchmlError
from batchml.monitoring import monitor_run
from batchml.registry import ModelVersion, promote, read_aliases, resolve
from tests.conftest import make_image
from tests.ops_fixtures import MODEL, fake_run, register_tiny, tiny_card


def test_a_fifo_among_the_images_is_skipped_with_a_notice_never_opened(tmp_path):
    (tmp_path / "a.png").write_bytes(make_image(0, 1))
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would block forever
    plan = plan_prefix(str(tmp_path), {}, 10)
    assert list(plan.sizes) == ["a.png"]
    (notice,) = skipped_notices(plan)
    assert "pipe.png" in notice and "not a regular file" in notice


def test_webp_and_tiff_are_scored_and_other_files_skipped_with_a_notice(tmp_path):
    for name, fmt in (("a.webp", "WEBP"), ("b.tif", "TIFF")):
        Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / name, fmt)
    (tmp_path / "notes.txt").write_text("x")
    plan = plan_prefix(str(tmp_path), {}, 10)
    assert list(plan.sizes) == ["a.webp", "b.tif"]
    assert "notes.txt" in skipped_notices(plan)[0]
    assert decode_image((tmp_path / "a.webp").read_bytes(), Preprocessing())[0, 0].tolist() == [200, 200, 200]


def test_one_file_given_as_images_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(make_image(0, 1))
    with pytest.raises(BatchmlError, match=r"a.png is a file: it takes a folder"):
        plan_prefix(str(tmp_path / "a.png"), {}, 10)


def test_label_folders_that_are_not_classes_are_reported(tmp_path):
    for folder in ("circle", "cirlce"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.png").write_bytes(make_image(0, 1))
    (tmp_path / "top.png").write_bytes(make_image(0, 2))
    plan = plan_prefix(str(tmp_path), {}, 10)
    assert unknown_label_folders(plan, ["circle", "square"]) == ["cirlce"]


def test_the_listing_change_names_new_missing_and_changed_files():
    change = listing_change({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4, "e": 4})
    assert (change.new, change.missing, change.changed) == (["d", "e"], ["c"], ["b"])
    assert change.describe() == "2 new files (d, e), 1 missing (c), 1 changed in size (b)"
    assert not listing_change({"a": 1}, {"a": 1})


def test_transparent_pixels_are_white_not_black():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, :] = (255, 0, 0, 255)  # the top half opaque red, the rest transparent black
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    pixels = decode_image(buf.getvalue(), Preprocessing())
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[31, 0].tolist() == [255, 255, 255]


# -- aliases and cards ---------------------------------------------------------------------------


def test_an_alias_pointing_outside_models_is_refused(store):
    register_tiny(store)
    store.write_json(layout.aliases_path("tiny"), {"production": "../../../etc"})
    with pytest.raises(BatchmlError, match=r"aliases.json is damaged: alias 'production' points at "
                                           r"'../../../etc', which is not a version"):
        resolve(store, "tiny/production")
    promote(store, MODEL, "production")  # the fix the error names works
    assert read_aliases(store, "tiny") == {"production": "v1"}


def test_resolve_does_not_suggest_an_alias_promote_refuses(store):
    register_tiny(store)
    with pytest.raises(BatchmlError) as e:
        resolve(store, "tiny/v7")
    assert "no version or alias 'v7'" in str(e.value) and "--alias v7" not in str(e.value)


def test_an_empty_card_is_listed_as_damaged_and_the_others_still_listed(store, capsys):
    register_tiny(store)
    other = ModelVersion("zeta", "v1")
    store.write_bytes(other.model_path, b"x")
    store.write_json(other.card_path, {**tiny_card(), "name": "zeta"})
    store.write_json(MODEL.card_path, {})
    assert main(["models", "list", "--root", store.config.root]) == 0
    out = capsys.readouterr().out
    assert "tiny/v1    DAMAGED:" in out and "'classes' must be a non-empty list" in out
    assert any(line.startswith("zeta/v1") and "test accuracy" in line for line in out.splitlines())


# -- the command line ----------------------------------------------------------------------------


def _closed_pipe(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "batchml", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    proc.stdout.close()  # as `| head` does once it has its lines
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, "", err.decode())


def test_models_list_into_a_closed_pipe_is_no_traceback(store):
    register_tiny(store)
    done = _closed_pipe(["models", "list", "--root", store.config.root])
    assert "Traceback" not in done.stderr and done.returncode == 0


def test_monitor_into_a_closed_pipe_keeps_its_exit_code(store):
    fake_run(store)
    done = _closed_pipe(["monitor", "--run-id", "night-1", "--root", store.config.root])
    assert "Traceback" not in done.stderr and done.returncode == 1  # the night's error alert


def test_a_reversed_date_range_is_called_reversed(store, capsys):
    assert main(["monitor", "--since", "2026-12-01", "--until", "2026-11-01", "--root", store.config.root]) == 2
    assert "--since 2026-12-01 is after --until 2026-11-01: the range is reversed" in capsys.readouterr().err


def test_monitor_since_resolves_an_alias_and_names_several_models(store, capsys):
    fake_run(store, "night-1")
    monitor_run(store, "night-1")
    assert main(["monitor", "--since", "2000-01-01", "--model", "tiny/production", "--root", store.config.root]) == 0
    assert "1 runs committed" in capsys.readouterr().out
    other = ModelVersion("tiny", "v2")
    store.write_bytes(other.model_path, b"x")
    store.write_json(other.card_path, tiny_card())
    fake_run(store, "night-2", seed=3)
    manifest = store.read_json("runs/night-2/manifest.json")
    store.write_json("runs/night-2/manifest.json", {**manifest, "model_version": "tiny/v2"})
    monitor_run(store, "night-2")
    assert main(["monitor", "--since", "2000-01-01", "--root", store.config.root]) == 0
    assert "models tiny/v1, tiny/v2 folded together" in capsys.readouterr().out


def test_a_full_disk_is_a_clear_error_not_a_traceback(store, capsys, monkeypatch):
    import errno

    fake_run(store)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/store/monitoring/runs/x.parquet")

    monkeypatch.setattr("batchml.store.Store.write_bytes", full)
    assert main(["monitor", "--run-id", "night-1", "--root", store.config.root]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device writing /data/store/monitoring/runs/x.parquet" in err
    assert "Traceback" not in err


def test_run_json_is_created_exclusively_never_overwritten(store, tmp_path, monkeypatch):
    """Another job writes run.json between this one's look and its write: this one checks against it."""
    from batchml.score import resume as scoring
    from batchml.score.scoring import ScoreConfig

    register_tiny(store)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(make_image(0, 1))
    plan = plan_prefix(str(tmp_path / "in"), {}, 10)
    theirs = {"run_id": "r", "dataset": "elsewhere", "model_version": "tiny/v1", "partition_size": 10}
    store.write_json(layout.run_path("r", layout.RUN_SPEC), theirs)
    monkeypatch.setattr(scoring, "check_loadable", lambda store, mv: None)
    real_exists = store.exists
    monkeypatch.setattr(store, "exists", lambda rel: False if rel.endswith("run.json") else real_exists(rel))
    cfg = ScoreConfig(None, "tiny/production", "r", images=str(tmp_path / "in"))
    with pytest.raises(BatchmlError, match="run 'r' scores dataset 'elsewhere'"):
        scoring.start_run(store, cfg, "r", plan, verbose=False)
    assert store.read_json(layout.run_path("r", layout.RUN_SPEC)) == theirs


def test_the_dashboards_listing_skips_a_damaged_card_with_a_warning(store):
    from batchml.integrity import DamagedFileWarning
    from batchml.registry import list_registered

    register_tiny(store)
    other = ModelVersion("zeta", "v1")
    store.write_bytes(other.model_path, b"x")
    store.write_json(other.card_path, {})
    with pytest.warns(DamagedFileWarning, match=r"zeta/v1/card.json"):
        assert [str(r.version) for r in list_registered(store)] == ["tiny/v1"]
    assert [r.problem != "" for r in list_registered(store, include_damaged=True)] == [False, True]


def test_an_input_that_is_not_there_is_named_before_a_cluster_starts(store, tmp_path, capsys):
    from batchml.score.scoring import ScoreConfig, committed_already

    with pytest.raises(BatchmlError, match="unknown dataset 'nope'"):
        committed_already(store, ScoreConfig("nope", run_id="night-1"))
    with pytest.raises(BatchmlError, match=r"no .* files under .*gone"):
        committed_already(store, ScoreConfig(None, images=str(tmp_path / "gone"), run_id="night-1"))
    # the CLI never reaches its cluster (none is reachable at this address)
    code = main(["score", "--dataset", "nope", "--scheduler", "tcp://127.0.0.1:9", "--root", store.config.root])
    assert code == 2 and "unknown dataset 'nope'" in capsys.readouterr().err
