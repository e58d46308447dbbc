"""Object storage at real latency (issue 23): requests in flight derived from latency and bounded by
memory, the next partition read ahead, listings streamed page by page, ingest from S3 and its resume."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from fsspec import AbstractFileSystem
from fsspec.asyn import AsyncFileSystem, sync
from yarl import URL

from batchml import layout
from batchml.data import fetch, inputs
from batchml.data.fetch import InFlight, fetch_many
from batchml.data.ingest import ingest
from batchml.data.inputs import read_files, read_with_retries
from batchml.data.listing import iter_listing
from batchml.data.signed_get import EMPTY_SHA256, Credentials, SignedGet
from batchml.errors import BatchmlError
from batchml.score.prefetch import Prefetcher
from batchml.store import Store, StoreConfig
from tests.conftest import FaultyS3Proxy, make_image, s3_options
from tests.s3_server import serving


class SlowStore(AsyncFileSystem):
    """Objects of ``size`` bytes that each take ``latency`` seconds to arrive; counts requests in flight."""

    def __init__(self, latency: float, size: int = 3000) -> None:
        super().__init__(asynchronous=False)
        self.latency, self.size, self.now, self.peak = latency, size, 0, 0

    async def _cat_file(self, path, start=None, end=None, **kwargs):
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(self.latency)
        self.now -= 1
        if path.endswith("missing"):
            raise FileNotFoundError(path)
        return b"x" * self.size


def test_requests_in_flight_follow_latency_within_the_bounds():
    assert InFlight(latency_s=0.0).limit(2000) == fetch.MIN_IN_FLIGHT
    assert InFlight(latency_s=0.02, size_bytes=3000).limit(2000) == 200  # 10,000/s x 20 ms
    assert InFlight(latency_s=1.0, size_bytes=3000).limit(2000) == fetch.most_in_flight()  # 512, files allowing
    assert InFlight(latency_s=0.02).limit(5) == 5  # never more than there is to read
    assert InFlight(latency_s=0.05, size_bytes=32 << 20).limit(2000) == fetch.MEMORY_BOUND_BYTES // (32 << 20)


def test_a_low_open_file_limit_is_raised_or_bounds_the_requests_in_flight(monkeypatch):
    """512 sockets at once would exhaust a soft limit of 1,024 files (many systems' default) beside
    Dask's own: the soft limit is raised toward the hard one, and what stays low bounds the requests."""
    import resource

    limits = {"now": (1024, 1024)}
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.update(now=value))
    for hard, raised, most in ((1024, 1024, 256), (4096, 2048, 512), (resource.RLIM_INFINITY, 2048, 512)):
        limits["now"] = (1024, hard)
        fetch._open_files.cache_clear()
        try:
            assert fetch.most_in_flight() == most and limits["now"] == (raised, hard)
            assert InFlight(latency_s=1.0, size_bytes=3000).limit(2000) == most
        finally:
            fetch._open_files.cache_clear()


def test_at_20ms_a_partition_is_read_with_at_least_64_requests_in_flight():
    fs = SlowStore(0.02)
    started = time.perf_counter()
    got = fetch_many(fs, [f"b/{i}.jpg" for i in range(2000)], InFlight())
    seconds = time.perf_counter() - started
    assert len(got) == 2000 and all(v == b"x" * 3000 for v in got.values())
    assert 64 <= fs.peak <= fetch.MAX_IN_FLIGHT
    assert seconds < 2000 * 0.02 / 32  # one at a time would take 40 s


def test_requests_in_flight_are_bounded_by_memory_for_large_objects():
    fs, in_flight = SlowStore(0.02, size=16 << 20), InFlight()
    fetch_many(fs, [f"b/{i}" for i in range(8)], in_flight)  # learns the size
    fs.peak = 0
    fetch_many(fs, [f"b/{i}" for i in range(60)], in_flight)  # four times what the bound lets in at once
    assert fs.peak <= fetch.MEMORY_BOUND_BYTES // (16 << 20)


def test_each_path_gets_its_bytes_or_its_own_error():
    got = fetch_many(SlowStore(0.001), ["b/a.jpg", "b/missing"], InFlight())
    assert got["b/a.jpg"] == b"x" * 3000 and isinstance(got["b/missing"], FileNotFoundError)


def test_local_files_are_read_in_the_callers_thread_while_quick(tmp_path, monkeypatch):
    for i in range(20):
        (tmp_path / f"{i:02d}.png").write_bytes(make_image(i % 3, i))
    monkeypatch.setattr(fetch, "ThreadPoolExecutor", None)  # a pool would cost ten times the CPU per file
    table = read_files(StoreConfig(str(tmp_path)), tuple(f"{i:02d}.png" for i in range(20)), ())
    assert table["image"].to_pylist() == [(tmp_path / f"{i:02d}.png").read_bytes() for i in range(20)]


class SlowMount(AbstractFileSystem):
    """A synchronous filesystem (a network mount) that takes ``latency`` seconds a file."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency, self.now, self.peak, self.lock = latency, 0, 0, threading.Lock()

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(self.latency)
        with self.lock:
            self.now -= 1
        if path.endswith("missing"):
            raise FileNotFoundError(path)
        return path.encode()


def test_a_slow_synchronous_filesystem_gets_threads_once_it_is_seen_to_be_slow():
    fs, in_flight = SlowMount(0.01), InFlight()
    paths = [f"m/{i}" for i in range(200)] + ["m/missing"]
    got = fetch_many(fs, paths, in_flight)
    assert [got[p] for p in paths[:-1]] == [p.encode() for p in paths[:-1]]
    assert isinstance(got["m/missing"], FileNotFoundError)
    assert fs.peak >= fetch.MIN_IN_FLIGHT
    fs.peak = 0
    fetch_many(fs, paths[:20], in_flight)  # learnt: threads from the first file
    assert fs.peak > 1


def test_the_read_ahead_table_goes_to_the_next_task_and_at_most_two_wait():
    prefetcher, reads = Prefetcher(kept=2), []

    def read(name):
        reads.append(name)
        return pa.table({"n": [name]})

    for name in ("a", "b", "c"):
        prefetcher.start(name, lambda name=name: read(name))
    assert prefetcher.take("c")["n"].to_pylist() == ["c"]
    assert prefetcher.take("c") is None  # taken once
    assert prefetcher.take("zzz") is None and prefetcher.hits == 1


def test_a_failed_read_ahead_leaves_the_task_to_read_for_itself():
    prefetcher = Prefetcher()
    prefetcher.start("a", lambda: (_ for _ in ()).throw(OSError("503")))
    assert prefetcher.take("a") is None
    # a read that made all its attempts already fails the task with its error, not after as many again
    prefetcher.start("b", lambda: (_ for _ in ()).throw(BatchmlError("could not read 1 file(s) after 4 attempts")))
    with pytest.raises(BatchmlError, match="after 4 attempts"):
        prefetcher.take("b")


# -- over the S3 protocol ----------------------------------------------------------------------------


def _bucket(endpoint: str) -> str:
    import boto3

    bucket = f"feed-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket


def _put_many(endpoint: str, bucket: str, objects: dict[str, bytes]) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


@pytest.mark.slow
def test_a_listing_of_many_objects_comes_page_by_page(tmp_path):
    folder = tmp_path / "objects" / "bkt" / "night"  # served by the read-only S3 server: moto's PUTs are slow
    folder.mkdir(parents=True)
    for i in range(2500):
        (folder / f"{i:05d}.jpg").write_bytes(b"x")
    with serving(tmp_path / "objects") as endpoint:
        store = Store(StoreConfig("s3://bkt/night", s3_options(endpoint)))
        listed = iter_listing(store.fs, store.path(""))
        first = next(listed)
        lists_then = json.loads(urllib.request.urlopen(f"{endpoint}/_stats").read())["lists"]
        assert first.name == "00000.jpg" and lists_then == 1  # the first page, before the rest is asked for
        rest = list(listed)
        lists = json.loads(urllib.request.urlopen(f"{endpoint}/_stats").read())["lists"]
    assert len(rest) == 2499 and lists == 3  # pages of 1,000


def test_an_s3_prefix_in_folders_is_listed_folder_by_folder_at_once(tmp_path):
    """The top level first (its objects, its folders), then the folders' pages a round at a time: a
    listing waits on each page's token, so a feed in twelve folders is listed near twelve times faster."""
    folder = tmp_path / "objects" / "bkt" / "feed"
    names = [f"top-{i}.jpg" for i in range(3)] + [f"cam {c:02d}/{i:04d}.jpg" for c in range(12) for i in range(1500)]
    names += ["cam 00/deeper/x.jpg", "cam 07/"]  # a deeper object, and a folder marker (no object of the feed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if not name.endswith("/"):
            (folder / name).write_bytes(b"x")
    with serving(tmp_path / "objects", latency=0.05) as endpoint:
        store = Store(StoreConfig("s3://bkt/feed", s3_options(endpoint)))
        listed = [e.name for e in iter_listing(store.fs, store.path(""))]
        stats = json.loads(urllib.request.urlopen(f"{endpoint}/_stats").read())
    assert sorted(listed) == sorted(n for n in names if not n.endswith("/")) and len(listed) == len(set(listed))
    assert stats["lists"] == 1 + 12 * 2 and stats["in_flight_max"] >= 12  # two pages a folder, a round at once


def test_an_s3_prefix_in_a_folder_per_image_costs_the_requests_of_one_listing(tmp_path):
    """A feed in a folder per image (or per few): the folders are listed in runs of neighbours, not a
    request each (400 folders were 401 requests where one flat listing takes 2); every object once,
    top-level objects between the folders (``0007.jpg``, ``0007-x/``, which sort around ``0007/``) too."""
    folder = tmp_path / "objects" / "bkt" / "feed"
    names = [f"{c:04d}/{i}.jpg" for c in range(400) for i in range(3)]
    names += ["0007.jpg", "0007-x/a.jpg", "0007!/b.jpg", "0399.jpg", "zz.jpg", "0000 /c.jpg", "0100/deep/d.jpg"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    with serving(tmp_path / "objects") as endpoint:
        store = Store(StoreConfig("s3://bkt/feed", s3_options(endpoint)))
        listed = [e.name for e in iter_listing(store.fs, store.path(""))]
        stats = json.loads(urllib.request.urlopen(f"{endpoint}/_stats").read())
    assert sorted(listed) == sorted(names) and len(listed) == len(set(listed))
    assert stats["lists"] <= 1 + 64 + 2  # the top level, then at most 64 listings of runs of folders


def test_an_s3_listing_is_parsed_without_botocore_and_keeps_odd_names(tmp_path, monkeypatch):
    """Pages come by the signed GET (botocore took 0.1 s of CPU a page), keys URL-encoded on the wire
    (as botocore asks: XML cannot carry every character) and decoded; what it cannot do goes to s3fs."""
    folder = tmp_path / "objects" / "bkt" / "feed"
    names = ["a b+c.jpg", "p%41q.jpg", "ünï/日本.jpg", "x&y<z>.jpg"] + [f"n/{i:04d}.jpg" for i in range(1500)]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * 3)
    with serving(tmp_path / "objects") as endpoint:
        store = Store(StoreConfig("s3://bkt/feed", s3_options(endpoint)))
        real_call = store.fs._call_s3
        monkeypatch.setattr(store.fs, "_call_s3", None)  # botocore's list_objects_v2 is not asked
        listed = list(iter_listing(store.fs, store.path("")))
        assert sorted(e.name for e in listed) == sorted(names) and {e.size for e in listed} == {3}
        assert fetch._SIGNED[id(store.fs)].declined == 0
        monkeypatch.setattr(store.fs, "_call_s3", real_call)
        assert list(iter_listing(store.fs, "no-such-bucket/feed")) == []  # a 404 is s3fs's to answer


def test_a_local_listing_names_each_file_and_what_is_not_one(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "1.png").write_bytes(b"xy")
    (tmp_path / "a" / "deep" / "2.jpg").write_bytes(b"xyz")
    (tmp_path / "a" / "link.png").symlink_to(tmp_path / "a" / "1.png")  # a link to a file is the file
    (tmp_path / "a" / "gone.png").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "a" / "pipe.png")
    (tmp_path / "loop").symlink_to(tmp_path)  # a link to a folder is not followed: it would never end
    listed = sorted(iter_listing(Store(StoreConfig(str(tmp_path))).fs, str(tmp_path)))
    assert [(e.name, e.size, e.kind) for e in listed] == [
        ("a/1.png", 2, "file"), ("a/deep/2.jpg", 3, "file"), ("a/gone.png", None, "other"),
        ("a/link.png", 2, "file"), ("a/pipe.png", 0, "other"), ("loop", listed[-1].size, "other")]
    assert list(iter_listing(Store(StoreConfig(str(tmp_path))).fs, str(tmp_path / "missing"))) == []


@pytest.mark.slow
def test_ingest_from_s3_writes_partitions_and_resumes_after_a_crash(s3_endpoint, store):
    bucket = _bucket(s3_endpoint)
    images = {f"feed/{c}/{i:02d}.png": make_image(k, 10 * k + i) for k, c in enumerate(("a", "b")) for i in range(10)}
    _put_many(s3_endpoint, bucket, images)
    gets = []
    proxy = FaultyS3Proxy(s3_endpoint, fail=lambda method, path: gets.append(path) if method == "GET"
                          and path.endswith(".png") else None)
    proxy.start()
    try:
        url, options = f"s3://{bucket}/feed/", s3_options(proxy.endpoint)
        first = ingest(store, url, "feed", partition_size=8, verbose=False, storage_options=options)
        assert (first.rows, first.partitions, first.written, len(gets)) == (20, 3, 3, 20)
        table = store.read_parquet(layout.dataset_path("feed", "part-00000.parquet"))
        assert table["image_id"].to_pylist()[:2] == ["train/a/00.png", "train/a/01.png"]
        assert table["label"].to_pylist()[:1] == [0] and table["image"][0].as_py() == images["feed/a/00.png"]
        # a crash after two partitions: the last and the manifest were never written
        store.delete(layout.dataset_path("feed", layout.DATASET_MANIFEST))
        store.delete(layout.dataset_path("feed", "part-00002.parquet"))
        gets.clear()
        again = ingest(store, url, "feed", partition_size=8, verbose=False, storage_options=options)
    finally:
        proxy.stop()
    assert (again.rows, again.written, len(gets)) == (20, 1, 4)  # only the missing partition's objects
    assert store.exists(layout.dataset_path("feed", layout.DATASET_MANIFEST))


@pytest.mark.slow
def test_files_on_a_store_20ms_away_are_read_with_64_requests_in_flight(tmp_path):
    folder = tmp_path / "objects" / "bkt" / "night"
    folder.mkdir(parents=True)
    for i in range(1000):
        (folder / f"{i:04d}.png").write_bytes(b"p" * 2000)
    with serving(tmp_path / "objects", latency=0.02) as endpoint:
        config = StoreConfig("s3://bkt/night", {"client_kwargs": {"endpoint_url": endpoint}, "key": "k",
                                                  "secret": "s"})
        read_files(config, ("0000.png",), ())  # connects; learns the latency
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/_stats", method="POST")).read()
        table = read_files(config, tuple(f"{i:04d}.png" for i in range(1000)), ())
        stats = json.loads(urllib.request.urlopen(f"{endpoint}/_stats").read())
    assert table.num_rows == 1000
    # one signed GET per object, no HEAD and nothing left to s3fs
    assert stats["requests"] == 1000 and fetch._SIGNED[id(Store(config).fs)].declined == 0
    # how many stay in flight also depends on the CPU each request gets (client and server share
    # these cores): botocore's ~1 ms a request held the median near 14, the signed GET near 60
    assert stats["in_flight_max"] >= 64 and stats["in_flight_median"] >= 32


def test_signed_gets_carry_botocores_own_signature(monkeypatch):
    """The signature of ``signed_get`` is botocore's, for odd keys, a listing's query, a session token, both
    addressing styles."""
    import datetime

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    when = datetime.datetime(2026, 12, 3, 15, 4, 5, tzinfo=datetime.UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    for endpoint, virtual in (("http://127.0.0.1:9000", False), ("http://s3.eu-west-1.amazonaws.com", True)):
        signer = SignedGet(None, endpoint, "eu-west-1", 1, (1.0, 1.0), None, virtual)
        listing = {"list-type": "2", "prefix": "night/cam 1/ü+", "max-keys": "1000", "encoding-type": "url",
                   "continuation-token": "1/abc=="}
        for path, query in (("bkt/night/cam 1/a+b=c~d.png", None), ("bkt/ünï/日本.jpg", None),
                            ("bkt/x/%41;@$,.png", None), ("bkt", listing)):
            for token in (None, "session-token"):
                where = signer.where(path, query)
                ours = signer.signed(where.host, where.canonical, Credentials("AKID", "secret/key", token),
                                     "20261203T150405Z", where.query)
                theirs = AWSRequest(method="GET", url=where.url, headers={"X-Amz-Content-SHA256": EMPTY_SHA256})
                botocore.auth.S3SigV4Auth(BotoCredentials("AKID", "secret/key", token), "s3", "eu-west-1"
                                          ).add_auth(theirs)
                assert ours["Authorization"] == theirs.headers["Authorization"], (endpoint, path, token)
                assert ours["host"] == URL(where.url, encoded=True).raw_authority


def test_signed_gets_address_by_host_name_only_the_buckets_botocore_does():
    """On AWS a bucket whose name is not a DNS label (legacy capitals or underscores, dots, over 63
    characters) is addressed by path, as botocore does, not at a host name that is not the bucket's."""
    signer = SignedGet(None, "https://s3.eu-west-1.amazonaws.com", "eu-west-1", 1, (1.0, 1.0), None, True)
    assert signer.where("bkt/k").url == "https://bkt.s3.eu-west-1.amazonaws.com/k"
    assert signer.where("bkt/k")[2:4] == ("bkt.s3.eu-west-1.amazonaws.com", 443)
    on_a_port = SignedGet(None, "https://s3.eu-west-1.amazonaws.com:4443", "eu-west-1", 1, (1.0, 1.0), None, True)
    assert on_a_port.where("bkt/k")[1:4] == ("bkt.s3.eu-west-1.amazonaws.com:4443", "bkt.s3.eu-west-1.amazonaws.com",
                                             4443)
    for bucket in ("My_Bucket", "under_score", "my.bucket", "b" * 64):
        assert signer.where(f"{bucket}/k").url == f"https://s3.eu-west-1.amazonaws.com/{bucket}/k", bucket


def test_s3_reads_send_no_netrc_entry_with_the_signature(tmp_path, monkeypatch):
    """A ~/.netrc entry for the store's host is not sent with the signed GET (aiohttp's trust_env
    sent it as Basic auth, and refused it beside the signature: every read failed, ValueError)."""
    (tmp_path / "objects" / "bkt").mkdir(parents=True)
    (tmp_path / "objects" / "bkt" / "a.png").write_bytes(b"png")
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setattr(inputs, "READ_BACKOFF_SECONDS", 0)
    with serving(tmp_path / "objects") as endpoint:
        store = Store(StoreConfig("s3://bkt", {"client_kwargs": {"endpoint_url": endpoint}, "key": "k", "secret": "s"}))
        assert read_with_retries(store, ["bkt/a.png"]) == {"bkt/a.png": b"png"}
        assert fetch._SIGNED[id(store.fs)].declined == 0


def test_signed_gets_take_the_environments_proxies_and_leave_what_they_cannot_to_s3fs(tmp_path, monkeypatch):
    """The environment's proxies are used (trust_env is off); botocore's configured proxies, a CA
    bundle that cannot be loaded (missing on this worker: each read said the file was "gone now")
    and a client certificate (which the signed GET does not present) leave the reads to s3fs."""
    monkeypatch.setenv("HTTP_PROXY", "http://user:pw@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "inside.example")
    signer = SignedGet(None, "http://store.example", "us-east-1", 1, (1.0, 1.0), None, False)
    proxy, headers = signer._proxy("store.example", "store.example")
    assert str(proxy) == "http://proxy.example:3128" and headers["Proxy-Authorization"].startswith("Basic ")
    assert signer._proxy("inside.example", "inside.example") == (None, None)
    endpoint = {"endpoint_url": "http://store.example"}
    for options in ({"client_kwargs": endpoint, "config_kwargs": {"proxies": {"http": "http://proxy.example:3128"}}},
                    {"client_kwargs": {**endpoint, "verify": str(tmp_path / "no-ca.pem")}},
                    {"client_kwargs": endpoint, "config_kwargs": {"client_cert": str(tmp_path / "client.pem")}}):
        fs = Store(StoreConfig("s3://bkt", {**options, "key": "k", "secret": "s"})).fs
        sync(fs.loop, fetch._whole_object_reader, fs)
        assert fetch._SIGNED[id(fs)] is None, options


def test_signed_gets_through_a_proxy_that_asks_a_password_carry_it_and_no_proxy_names_a_port(monkeypatch):
    """A plain-HTTP GET through a proxy carries the proxy's credentials (aiohttp sent ``proxy_headers``
    only on an https CONNECT: every GET was answered 407 and left to s3fs); ``NO_PROXY=host:port``
    bypasses the proxy, as botocore's; an IPv6 zone is connected to decoded."""
    seen: list[bytes] = []

    class Proxy(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            if b"\r\n\r\n" in self.buffer:
                seen.append(self.buffer)
                ok = b"proxy-authorization: basic " in self.buffer.lower()
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if ok else
                                     b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                self.buffer = b""

    async def main() -> bytes:
        server = await asyncio.get_running_loop().create_server(Proxy, "127.0.0.1", 0)
        monkeypatch.setenv("HTTP_PROXY", f"http://u:pw@127.0.0.1:{server.sockets[0].getsockname()[1]}")
        signer = SignedGet(None, "http://minio.example:9000", "us-east-1", 1, (2.0, 2.0), None, False)
        try:
            return await signer.get("bkt/night/a.png", Credentials("AKID", "secret", None))
        finally:
            await signer.close()
            server.close()

    assert asyncio.run(main()) == b"ok"
    assert seen[0].startswith(b"GET http://minio.example:9000/bkt/night/a.png HTTP/1.1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "minio.example:9000")
    signer = SignedGet(None, "http://minio.example:9000", "us-east-1", 1, (1.0, 1.0), None, False)
    assert signer._proxy("minio.example:9000", "minio.example") == (None, None)
    assert signer._proxy("minio.example:9001", "minio.example")[0] is not None  # another port: proxied
    zoned = SignedGet(None, "http://[fe80::1%25lo]:9000", "us-east-1", 1, (1.0, 1.0), None, False)
    assert zoned.where("bkt/k")[2:4] == ("fe80::1%lo", 9000)


def test_signed_gets_of_two_partitions_at_once_share_the_clients_connection_pool(tmp_path):
    """A task and its read-ahead read at once: together they keep at most ``max_pool_connections``
    sockets open, as s3fs's client did (the signed GET's pool had no limit: 2 x 256 per thread)."""
    for i in range(40):
        (tmp_path / "objects" / "bkt").mkdir(parents=True, exist_ok=True)
        (tmp_path / "objects" / "bkt" / f"{i}.png").write_bytes(b"png")
    with serving(tmp_path / "objects", latency=0.2) as endpoint:
        store = Store(StoreConfig("s3://bkt", {"client_kwargs": {"endpoint_url": endpoint}, "key": "k", "secret": "s",
                                               "config_kwargs": {"max_pool_connections": 8}}))
        with ThreadPoolExecutor(2) as pool:
            halves = [[f"bkt/{i}.png" for i in range(j, 40, 2)] for j in range(2)]
            got = list(pool.map(lambda paths: fetch_many(store.fs, paths, InFlight(latency_s=1.0)), halves))
        stats = json.loads(urllib.request.urlopen(f"{endpoint}/_stats").read())
    assert all(v == b"png" for part in got for v in part.values()) and stats["requests"] == 40
    assert stats["in_flight_max"] <= 8


def test_signed_gets_trust_the_ca_bundle_botocore_resolved(tmp_path, monkeypatch):
    """A private CA named by REQUESTS_CA_BUNDLE (or a profile's ca_bundle) is trusted by botocore, so by
    the signed GET too: it read AWS_CA_BUNDLE alone, and failed every read on TLS where s3fs read."""
    import certifi

    bundle = tmp_path / "private-ca.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes())
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    fs = Store(StoreConfig("s3://bkt", {"client_kwargs": {"endpoint_url": "https://private-ca.example"},
                                        "key": "k", "secret": "s"})).fs
    assert sync(fs.loop, SignedGet.for_fs, fs).verify == str(bundle)


def test_importing_the_signed_get_alone_leaves_nothing_on_stderr_at_exit():
    done = subprocess.run([sys.executable, "-c", "import batchml.data.signed_get"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == ""


@pytest.mark.slow
def test_s3_reads_retry_what_is_transient_and_leave_the_rest_to_s3fs(s3_endpoint):
    bucket = _bucket(s3_endpoint)
    objects = {f"night/{i:02d} ü+.png": make_image(i % 3, i) for i in range(12)}
    _put_many(s3_endpoint, bucket, objects)
    seen: dict = {}

    def first_get_fails(method: str, path: str) -> str | None:  # 503 to the first GET of each object
        seen[path] = seen.get(path, 0) + 1
        return "503" if method == "GET" and "list-type" not in path and seen[path] == 1 else None

    proxy = FaultyS3Proxy(s3_endpoint, fail=first_get_fails).start()
    try:
        store = Store(StoreConfig(f"s3://{bucket}", s3_options(proxy.endpoint)))
        paths = [store.path(name) for name in objects] + [store.path("night/missing.png")]
        got = fetch_many(store.fs, paths)
    finally:
        proxy.stop()
    assert [got[store.path(name)] for name in objects] == list(objects.values())
    assert isinstance(got[store.path("night/missing.png")], FileNotFoundError)  # a 404: s3fs's own answer
    signed = fetch._SIGNED[id(store.fs)]
    assert signed is not None and signed.declined == 1
    assert proxy.counts["503"] == 13 and proxy.counts["ok"] >= 13  # each retried once, inside the signed path


def test_a_local_folder_that_cannot_be_read_is_named_not_the_end_of_the_listing(tmp_path, monkeypatch):
    """A disk's lost+found (root's, mode 700) under a feed read by another user: os.scandir's
    PermissionError ended the whole listing, and so the run (fsspec's ``walk`` left the folder out)."""
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "1.jpg").write_bytes(b"xy")
    scandir = os.scandir

    def denied(path):
        if str(path).endswith("lost+found"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    fs = Store(StoreConfig(str(tmp_path))).fs
    listed = sorted(iter_listing(fs, str(tmp_path)))
    assert [(e.name, e.kind) for e in listed] == [("cam/1.jpg", "file"), ("lost+found", "other")]
    files, skipped = inputs.image_files(listed)
    assert files == [("cam/1.jpg", 2)] and ["lost+found"] in skipped.values()
    with pytest.raises(PermissionError):  # the folder asked for itself: its own error
        list(iter_listing(fs, str(tmp_path / "lost+found")))


def test_an_s3_listing_outlasts_a_burst_of_slowdowns_as_s3fs_did(tmp_path):
    """A page the signed path could not get in its few quick attempts (S3 throttling a busy prefix:
    503 SlowDown for a second or two) goes to s3fs, whose botocore retries and own retries outlast
    it, as every page did before the signed path; it failed the whole listing, and so the run."""
    folder = tmp_path / "objects" / "bkt" / "feed"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"x")
    lists = []

    def throttled(method: str, path: str) -> str | None:
        if "list-type" in path:
            lists.append(path)
            return "503" if len(lists) <= 5 else None  # as many as the signed path attempts (max_attempts 4)
        return None

    with serving(tmp_path / "objects") as endpoint:
        proxy = FaultyS3Proxy(endpoint, fail=throttled).start()
        try:
            store = Store(StoreConfig("s3://bkt/feed", s3_options(proxy.endpoint)))
            listed = [e.name for e in iter_listing(store.fs, store.path(""))]
        finally:
            proxy.stop()
    assert sorted(listed) == ["0.jpg", "1.jpg", "2.jpg"] and len(lists) == 6
    assert fetch._SIGNED[id(store.fs)].declined == 0  # a transient failure is not an answer left to s3fs


def test_a_listing_page_that_is_not_one_is_left_to_botocore_never_read_as_empty():
    """A 200 whose body is an <Error> (a gateway, a proxy) read as a page with no keys and no more
    pages: the listing would end there, silently short; an entry without a key or size raised a
    TypeError past the fallback to botocore."""
    from batchml.data.listing import _parsed_page

    for body in (b"<Error><Code>AccessDenied</Code></Error>",
                 b"<ListBucketResult><Contents><Key>a</Key></Contents></ListBucketResult>",
                 b"<ListBucketResult><EncodingType>url</EncodingType><Contents><Size>1</Size></Contents>"
                 b"</ListBucketResult>"):
        with pytest.raises(ValueError):
            _parsed_page(body)
    ns = b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
    assert _parsed_page(b"<ListBucketResult" + ns + b"><IsTruncated>false</IsTruncated></ListBucketResult>") == {
        "Contents": [], "CommonPrefixes": [], "IsTruncated": False}
