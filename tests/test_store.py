import os

import pyarrow as pa
import pytest

from batchml.errors import BatchmlError
from batchml.store import Store, StoreConfig


def test_local_write_replaces_whole_and_leaves_no_temp_files(store):
    store.write_bytes("a/b.bin", b"old")
    store.write_bytes("a/b.bin", b"new")
    assert store.read_bytes("a/b.bin") == b"new"
    assert os.listdir(store.path("a")) == ["b.bin"]


def test_list_is_sorted_filtered_and_empty_when_absent(store):
    for name in ["b.json", "a.json", "c.txt"]:
        store.write_bytes(f"x/{name}", b"{}")
    assert store.list("x", ".json") == ["a.json", "b.json"]
    assert store.list("missing") == []


def test_parquet_and_json_round_trip(store):
    store.write_parquet("t.parquet", pa.table({"a": [1, 2]}))
    store.write_json("t.json", {"k": [1]})
    assert store.read_parquet("t.parquet")["a"].to_pylist() == [1, 2]
    assert store.read_json("t.json") == {"k": [1]}


def test_reading_a_missing_object_names_it(store):
    with pytest.raises(BatchmlError, match=r"nope.json does not exist"):
        store.read_bytes("nope.json")


def test_s3_store_round_trip_over_http(s3_store):
    s3_store.write_json("runs/r/manifest.json", {"ok": True})
    s3_store.write_bytes("runs/r/stats/part-00000.json", b"{}")
    assert s3_store.read_json("runs/r/manifest.json") == {"ok": True}
    assert s3_store.list("runs/r/stats", ".json") == ["part-00000.json"]
    assert s3_store.url("runs").startswith("s3://")


def test_unreachable_s3_endpoint_is_a_clear_error():
    from tests.conftest import free_port

    dead = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"}, "key": "k", "secret": "s",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    store = Store(StoreConfig("s3://bucket/prefix", dead))
    with pytest.raises(BatchmlError, match=r"endpoint is up"):
        store.write_json("x.json", {})


def test_listing_images_on_an_unreachable_endpoint_or_writing_to_a_missing_bucket_is_a_clear_error(s3_endpoint):
    from batchml.data import inputs
    from tests.conftest import free_port

    dead = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"}, "key": "k", "secret": "s",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    with pytest.raises(BatchmlError, match=r"cannot list --images s3://bucket/x: .*endpoint is up"):
        inputs.plan_prefix("s3://bucket/x", dead, 10)
    live = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    with pytest.raises(BatchmlError, match=r"cannot write s3://no-such-bucket/root/x.json: .*Create the bucket"):
        Store(StoreConfig("s3://no-such-bucket/root", live)).write_json("x.json", {})
    with pytest.raises(BatchmlError, match=r"no .* files under s3://no-such-bucket/x \(or its bucket does not exist"):
        inputs.plan_prefix("s3://no-such-bucket/x", live, 10)


def test_a_create_that_fails_midway_leaves_nothing(store, monkeypatch):
    """A full disk while an exclusive record is written (a labels batch's commit, run.json) must leave
    no zero-byte record behind: one wedged the run (every later monitor called it damaged)."""
    import errno
    import io

    real_open = io.open

    class Full(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, mode="r", *args, **kwargs):
        return Full(fd, "wb") if "w" in mode else real_open(fd, mode, *args, **kwargs)

    def full_open(file, mode="r", *args, **kwargs):
        return Full(file, "wb") if "w" in mode else real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(OSError, match="No space"):
        store.create("runs/r/labels/commit-00000.json", b'{"batch_id": "b"}')
    monkeypatch.undo()
    assert not os.path.exists(store.path("runs/r/labels/commit-00000.json"))
    assert [n for n in os.listdir(store.path("runs/r/labels")) if not n.startswith(".tmp-")] == []
    assert store.create("runs/r/labels/commit-00000.json", b'{"batch_id": "b"}')  # the rerun takes the number
    assert not store.create("runs/r/labels/commit-00000.json", b"{}")
    assert store.read_json("runs/r/labels/commit-00000.json") == {"batch_id": "b"}
    assert os.listdir(store.path("runs/r/labels")) == ["commit-00000.json"]


def test_the_temporary_files_of_a_killed_writer_are_swept_and_nothing_else(store):
    store.write_json("runs/r/stats/part-00000.json", {"rows": 1})
    for rel in ("runs/r/stats/.tmp-1-part-00001.json", "runs/r/predictions/.tmp-2-part-00001.parquet"):
        os.makedirs(os.path.dirname(store.path(rel)), exist_ok=True)
        with open(store.path(rel), "w") as f:
            f.write("half")
    assert store.sweep_temporary("runs/r") == 2
    assert os.listdir(store.path("runs/r/stats")) == ["part-00000.json"]
    assert os.listdir(store.path("runs/r/predictions")) == []
    assert store.sweep_temporary("runs/absent") == 0


def test_a_create_where_hard_links_are_refused_is_still_exclusive(store, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # some network and FUSE filesystems
    assert store.create("runs/r/run.json", b"{}")
    assert not store.create("runs/r/run.json", b'{"other": 1}')
    assert store.read_json("runs/r/run.json") == {}
    assert os.listdir(store.path("runs/r")) == ["run.json"]


def test_a_create_whose_link_fails_otherwise_raises_and_leaves_nothing(store, monkeypatch):
    import errno

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)  # not an exclusive open that could leave a torn record
    with pytest.raises(OSError, match="No space"):
        store.create("runs/r/run.json", b"{}")
    assert os.listdir(store.path("runs/r")) == []
