import os
import pickle
import tarfile

import numpy as np
import pytest

from batchml import layout
from batchml.data import datasets
from batchml.data.ingest import ingest
from batchml.errors import BatchmlError
from tests.conftest import CLASSES, make_image, write_class_folders


def mtimes(store, dataset):
    folder = store.path(layout.dataset_path(dataset))
    return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}


def test_class_folders_become_partitions_with_labels(store, image_folders):
    r = ingest(store, str(image_folders), "shapes", "train", partition_size=50, verbose=False)
    assert (r.rows, r.partitions, r.written) == (120, 3, 3)
    manifest = datasets.read_manifest(store, "shapes")
    assert manifest.classes == CLASSES
    table = datasets.read_partition(store, "shapes", "part-00000.parquet")
    assert table.column_names == ["image_id", "image", "label"]
    assert str(table.schema.field("label").type) == "int16"
    assert table["image_id"][0].as_py() == "train/circle/000.png"
    assert table["image"][0].as_py() == (image_folders / "train/circle/000.png").read_bytes()  # as received


def test_rerunning_the_same_ingest_changes_nothing(store, image_folders):
    ingest(store, str(image_folders), "shapes", "test", partition_size=25, verbose=False)
    before = mtimes(store, "shapes")
    again = ingest(store, str(image_folders), "shapes", "test", partition_size=25, verbose=False)
    assert again.written == 0
    assert mtimes(store, "shapes") == before


def test_another_source_under_an_existing_name_is_refused_and_nothing_changes(store, image_folders, tmp_path):
    ingest(store, str(image_folders), "shapes", "test", partition_size=25, verbose=False)
    before = mtimes(store, "shapes")
    other = write_class_folders(tmp_path / "other", {"test": 5})
    with pytest.raises(BatchmlError, match=r"already exists"):
        ingest(store, str(other), "shapes", "test", partition_size=25, verbose=False)
    assert mtimes(store, "shapes") == before


def test_tar_gz_of_class_folders_matches_the_folder(store, image_folders, tmp_path):
    archive = tmp_path / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folders / "test", arcname="test")
    from_tar = ingest(store, str(archive), "from-tar", "test", verbose=False)
    from_dir = ingest(store, str(image_folders), "from-dir", "test", verbose=False)
    assert from_tar.rows == from_dir.rows == 60
    fingerprint = [datasets.read_manifest(store, d).fingerprint for d in ("from-tar", "from-dir")]
    assert fingerprint[0] == fingerprint[1]


def test_a_tar_s_links_are_read_and_a_path_it_holds_twice_is_ingested_once(store, image_folders, tmp_path, capsys):
    """``tar -r`` appends a newer copy under the same path, and GNU tar stores a file it meets
    twice (a hard link) as a link: the dataset holds what ``tar -x`` would leave, one id each."""
    src = image_folders / "test" / "circle"
    first, second, third = sorted(src.iterdir())[:3]
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(first, arcname="test/circle/a.png")
        tar.add(second, arcname="test/circle/b.png")
        for name, kind, target in [("hard.png", tarfile.LNKTYPE, "test/circle/a.png"),
                                   ("soft.png", tarfile.SYMTYPE, "b.png"),
                                   ("gone.png", tarfile.SYMTYPE, "/etc/nothing.png")]:
            link = tarfile.TarInfo(f"test/circle/{name}")
            link.type, link.linkname = kind, target
            tar.addfile(link)
        tar.add(third, arcname="test/circle/a.png")  # a newer copy of a.png, as tar -r appends it
    r = ingest(store, str(archive), "links", "test", classes=CLASSES, verbose=False)
    rows = {row["image_id"]: row["image"] for p in datasets.read_manifest(store, "links").partitions
            for row in datasets.read_partition(store, "links", p["name"]).to_pylist()}
    assert r.rows == 4 and sorted(rows) == [f"test/circle/{n}.png" for n in ("a", "b", "hard", "soft")]
    assert rows["test/circle/a.png"] == third.read_bytes()  # the last copy
    assert rows["test/circle/hard.png"] == first.read_bytes()  # a hard link: the file archived before it
    assert rows["test/circle/soft.png"] == second.read_bytes()
    err = capsys.readouterr().err
    assert "1 path(s) appear more than once" in err and "test/circle/a.png" in err
    assert "1 link(s)" in err and "test/circle/gone.png" in err


def test_images_outside_class_folders_are_unlabelled(store, tmp_path):
    (tmp_path / "night").mkdir()
    for i in range(3):
        (tmp_path / "night" / f"{i}.png").write_bytes(make_image(0, i))
    ingest(store, str(tmp_path / "night"), "night", verbose=False)
    table = datasets.read_partition(store, "night", "part-00000.parquet")
    assert table["label"].null_count == 3


def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist(),
            b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)], b"batch_label": b"x"}


def write_cifar_batches(folder):
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}))
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(4, i)))
    return folder


def test_official_cifar_batches_keep_exact_pixels(store, tmp_path):
    from batchml.data.images import Preprocessing, decode_image

    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    r = ingest(store, str(tmp_path), "cifar-train", "train", verbose=False)
    assert r.rows == 20
    table = datasets.read_partition(store, "cifar-train", "part-00000.parquet")
    batch = pickle.loads((folder / "data_batch_1").read_bytes())
    first = batch[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(decode_image(table["image"][0].as_py(), Preprocessing()), first)
    assert table["label"][0].as_py() == batch[b"labels"][0]
    assert table["filename"][0].as_py() == "img_0_0.png"


def test_official_cifar_tarball_is_read_too(store, tmp_path):
    folder = write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    assert ingest(store, str(archive), "cifar-test", "test", verbose=False).rows == 4


def test_pickles_that_run_code_are_refused(store, tmp_path):
    folder = write_cifar_batches(tmp_path / "evil")
    (folder / "test_batch").write_bytes(pickle.dumps(os.system))
    with pytest.raises(BatchmlError, match=r"not a CIFAR-10 python batch"):
        ingest(store, str(folder), "evil", "test", verbose=False)


def test_keras_download_failure_names_the_alternatives(store, monkeypatch):
    import keras.datasets.cifar10 as kc

    def offline():
        raise OSError("no route to host")

    monkeypatch.setattr(kc, "load_data", offline)
    with pytest.raises(BatchmlError, match=r"cifar10-jpeg.tar.gz") as info:
        ingest(store, "cifar10", "cifar10", verbose=False)
    assert "cifar-10-python.tar.gz" in str(info.value)


@pytest.mark.parametrize(
    ("source", "split", "message"),
    [("/no/such/folder", "train", "does not exist"), ("IMAGES", "valid", "unknown split")],
)
def test_bad_sources_are_clear_errors(store, image_folders, source, split, message):
    with pytest.raises(BatchmlError, match=message):
        ingest(store, source.replace("IMAGES", str(image_folders)), "x", split, verbose=False)


def test_a_missing_split_lists_the_splits_found(store, tmp_path):
    write_class_folders(tmp_path, {"train": 2})
    with pytest.raises(BatchmlError, match=r"no 'test' split .found: train"):
        ingest(store, str(tmp_path), "x", "test", verbose=False)


def _tar_of(folder, archive, mode="w"):
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname="test")
    return archive


def test_a_plain_tar_cut_between_members_is_refused_and_commits_nothing(store, image_folders, tmp_path):
    whole = _tar_of(image_folders / "test", tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        cut_at = tar.getmembers()[len(tar.getmembers()) // 2].offset  # a member boundary
    (tmp_path / "cut.tar").write_bytes(whole[:cut_at])
    with pytest.raises(BatchmlError, match=r"cut.tar is truncated or corrupt .*end-of-archive"):
        ingest(store, str(tmp_path / "cut.tar"), "cut", "test", verbose=False)
    assert not store.exists("images/cut/dataset.json")


def test_a_truncated_tar_gz_is_a_clear_error(store, image_folders, tmp_path):
    whole = _tar_of(image_folders / "test", tmp_path / "whole.tar.gz", "w:gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(BatchmlError, match=r"cut.tar.gz is truncated or corrupt"):
        ingest(store, str(tmp_path / "cut.tar.gz"), "cut", "test", verbose=False)


def test_a_file_name_that_is_not_utf8_is_a_clear_error(store, tmp_path):
    folder = tmp_path / "night" / "circle"
    folder.mkdir(parents=True)
    (folder / "ok.png").write_bytes(make_image(0, 1))
    with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:  # Latin-1 bytes, as old cameras write
        f.write(make_image(0, 2))
    with pytest.raises(BatchmlError, match=r"caf\\\\xe9.png.* is not valid UTF-8: rename it"):
        ingest(store, str(tmp_path / "night"), "latin", verbose=False)


@pytest.mark.parametrize("classes", [["circle", "circle", "square"], ["circle", "", "square"]])
def test_repeated_or_empty_class_names_are_refused(store, image_folders, classes):
    with pytest.raises(BatchmlError, match=r"--classes .* has an empty or repeated name"):
        ingest(store, str(image_folders), "x", "test", classes=classes, verbose=False)


def test_a_label_outside_the_class_list_is_refused_at_ingest(store, tmp_path):
    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    batch = _cifar_batch(4, 5)
    batch[b"labels"][2] = 12  # ten classes
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(BatchmlError, match=r"has label 12, outside its 10 classes"):
        ingest(store, str(tmp_path), "cifar-bad", "test", verbose=False)


def test_a_link_to_nothing_in_class_folders_is_named_not_skipped_silently(store, image_folders, tmp_path, capsys):
    folder = write_class_folders(tmp_path / "linked", {"test": 2})
    (folder / "test" / "circle" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    r = ingest(store, str(folder), "linked", "test", verbose=False)
    assert r.rows == 6
    err = capsys.readouterr().err
    assert "1 image name(s)" in err and "test/circle/gone.png" in err and "left out" in err
