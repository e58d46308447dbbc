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
