"""Shared fixtures: synthetic images, a moto S3 server on loopback, a real Dask cluster."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batchml.store import Store, StoreConfig

CLASSES = ["circle", "square", "stripes"]
SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def make_image(label: int, seed: int, size: int = 32, fmt: str = "PNG") -> bytes:
    """A small image whose class shows in its colour, so a tiny net can learn it quickly."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    pixels[..., label % 3] += 150
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def write_class_folders(root: Path, per_class: dict[str, int], classes=CLASSES) -> Path:
    """``root/<split>/<class>/NNN.png`` with ``per_class[split]`` images per class."""
    for split, n in per_class.items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{i:03d}.png").write_bytes(make_image(label, zlib.crc32(f"{split}/{label}/{i}".encode())))
    return root


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(StoreConfig(str(tmp_path / "store")))


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("images"), {"train": 40, "test": 20})


@pytest.fixture(scope="session")
def cifar_slice(tmp_path_factory) -> Path:
    """A small slice of the real CIFAR-10 archive: 20 train and 10 test images per class."""
    if not SHARED_ARCHIVE.is_file():
        pytest.skip(f"{SHARED_ARCHIVE} not present")
    out = tmp_path_factory.mktemp("cifar_slice") / "cifar10-slice.tar.gz"
    with tarfile.open(SHARED_ARCHIVE) as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if member.isfile() and int(parts[2][:4]) < (20 if parts[0] == "train" else 10):
                dst.addfile(member, src.extractfile(member))
    return out


# -- S3 over HTTP: a moto server on 127.0.0.1 -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(procs: list, grace: float = 3.0) -> None:
    """Stop a cluster started with the dask CLI: workers first (SIGINT), then kill what still runs
    after ``grace`` seconds (a graceful close takes 8 s, and nothing of a test cluster needs it)."""
    for p in procs[::-1]:
        p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def wait_for_port(port: int, seconds: float = 60) -> bool:
    """True once something listens on 127.0.0.1:port, False after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def s3_endpoint():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    if not wait_for_port(port, 30):
        proc.kill()
        pytest.fail("moto server did not start")
    yield endpoint
    proc.terminate()
    proc.wait(10)


def s3_options(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}


@pytest.fixture
def s3_store(s3_endpoint) -> Store:
    import boto3

    bucket = f"batchml-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return Store(StoreConfig(f"s3://{bucket}/store", s3_options(s3_endpoint)))


def register_at_the_barrier(config: StoreConfig, barrier, tag: str, times: int, out) -> None:
    """In a child process: wait for the other, then register ``times`` versions of model 'race'
    (model bytes and card naming ``tag`` and the attempt); put the versions on ``out``."""
    from batchml.records import ModelCard
    from batchml.registry import register
    from tests.ops_fixtures import tiny_card

    store, versions = Store(config), []
    barrier.wait()
    for i in range(times):
        name = f"{tag}{i}"  # a whole card: `batchml doctor` afterwards (the chaos rounds) must find it whole
        versions.append(str(register(store, "race", name.encode(), ModelCard.from_dict({**tiny_card(), "arch": name}))))
    out.put(versions)


# -- a real Dask cluster with two worker processes ----------------------------------------------


@pytest.fixture(scope="session")
def client():
    from batchml.cluster import ClusterConfig, connect

    with connect(ClusterConfig(workers=2)) as c:
        yield c


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory, image_folders, client) -> Store:
    """A store holding the synthetic train/test datasets and a promoted model (1 epoch)."""
    from batchml.data.ingest import ingest
    from batchml.registry import promote
    from batchml.train.training import TrainConfig, train

    s = Store(StoreConfig(str(tmp_path_factory.mktemp("trained") / "store")))
    ingest(s, str(image_folders), "shapes-train", "train", partition_size=50, verbose=False)
    ingest(s, str(image_folders), "shapes-test", "test", partition_size=15, verbose=False)
    mv, _ = train(client, s, TrainConfig("shapes-train", "shapes-test", name="shapes", epochs=2,
                                         batch_size=16), verbose=False)
    promote(s, mv, "production")
    return s


def copy_store(src: Store, dst_root: Path) -> Store:
    shutil.copytree(src.config.root, dst_root)
    return Store(StoreConfig(str(dst_root)))


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that can be cut and restored: a store outage on demand."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target, self.port = target_port, free_port()
        self._threading = threading
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None

    def start(self) -> TcpProxy:
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", self.port))
        self._server.listen(64)
        self._threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            server.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class FaultyS3Proxy:
    """An HTTP proxy in front of the S3 endpoint that fails requests as a flaky network
    does: an HTTP 503 (SlowDown) or a connection dropped without an answer. ``fail(method,
    path)`` returns "503", "drop" or None per request; by default a seeded share ``rate``
    of requests fails, half each way. ``counts`` tallies what it did."""

    def __init__(self, target: str, rate: float = 0.0, seed: int = 0, fail=None) -> None:
        import collections
        import random

        self.target = target.removeprefix("http://")
        self.rate, self._rng, self.fail = rate, random.Random(seed), fail or self._by_rate
        self.counts: collections.Counter = collections.Counter()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def _by_rate(self, method: str, path: str) -> str | None:
        draw = self._rng.random()
        return None if draw >= self.rate else "503" if draw < self.rate / 2 else "drop"

    def start(self) -> FaultyS3Proxy:
        import threading
        from http.server import ThreadingHTTPServer

        handler = type("Relay", (_Relay,), {"proxy": self})
        # a reader opens a hundred connections at once: the default backlog of 5 would drop their SYNs
        # (a client then waits 1, 3, 7... s to try again), as no object store does
        server_class = type("Relay", (ThreadingHTTPServer,), {"request_queue_size": 1024})
        self._server = server_class(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a client killed mid-request is expected
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Relay(BaseHTTPRequestHandler):
    """One request through ``FaultyS3Proxy``: failed on purpose, or relayed to the endpoint."""

    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects
    proxy: FaultyS3Proxy
    _HOP = frozenset({"connection", "transfer-encoding", "expect", "keep-alive", "content-length"})
    _SLOW_DOWN = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>injected</Message></Error>"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _relay(self) -> None:
        import http.client

        body = self._body()
        fault = self.proxy.fail(self.command, self.path)
        self.proxy.counts[fault or "ok"] += 1
        if fault == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "503":
            return self._answer(503, [("Content-Type", "application/xml")], self._SLOW_DOWN)
        upstream = http.client.HTTPConnection(self.proxy.target, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in self._HOP:
                    upstream.putheader(k, v)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            resp = upstream.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in self._HOP]
            if self.command == "HEAD":
                headers.append(("Content-Length", resp.getheader("Content-Length", "0")))
            self._answer(resp.status, headers, data)
        finally:
            upstream.close()

    def _answer(self, status: int, headers: list, data: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay  # noqa: N815 - http.server's names


# -- the fast lane ---------------------------------------------------------------------------------

HEAVY_FIXTURES = {"client", "trained_store", "page"}  # a Dask cluster, a trained Keras model, Chromium


def pytest_collection_modifyitems(config, items) -> None:
    """``make test-fast`` (``-m "not slow"``) starts no Dask process, trains no Keras model and opens no
    browser: a test that reaches one of those fixtures, directly or through another, must be marked slow."""
    unmarked = [item.nodeid for item in items if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
                and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError(f"mark these @pytest.mark.slow (they use {', '.join(sorted(HEAVY_FIXTURES))}): "
                                + ", ".join(unmarked))
