"""A small read-only S3-compatible server over a local folder, for tests and benchmarks that need
many thousand GETs a second at a chosen latency (moto answers a few hundred).

    python -m tests.s3_server --folder DIR [--port 9000] [--latency 0.02] [--preload]

Each top-level folder of DIR is a bucket, each file under it an object. It speaks what s3fs
uses to read: GET (whole or a byte range) and HEAD of an object, HEAD of a bucket, ListObjectsV2
(prefix, delimiter, max-keys, continuation-token, start-after), path-style addressing, any
credentials. Writes are refused (405). Every request waits ``--latency`` seconds before it is
answered, as a store far away does, and the number of requests in flight is sampled as each
arrives: ``GET /_stats`` returns ``{"requests": N, "in_flight_median": M, "in_flight_max": X,
"lists": L, "cpu_seconds": C}`` (C: the server's own CPU time so far) and ``POST /_stats`` resets
the counts. With ``--preload`` the objects are served as they were when it started (a snapshot:
no stat per GET), while listings still read the folder.

It is HTTP/1.1 on a bare asyncio protocol (keep-alive, pipelining answered in order), not a web
framework: on a machine of two cores the server shares the cores with the client it serves, and
a benchmark must measure the client. An object GET costs it about a fifth of aiohttp's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hashlib
import itertools
import json
import os
import re
import socket
import stat
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qsl, quote_plus, unquote
from xml.sax.saxutils import escape

MAX_KEYS = 1000
CACHED_OBJECT_BYTES = 1 << 20  # objects up to this size are served from memory
MAX_HEAD_BYTES = 64 << 10  # a request line and headers longer than this are refused
REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           416: "Range Not Satisfiable"}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")

Response = tuple[int, dict[str, str] | bytes, bytes]  # status, headers (or the head, rendered), body


class ReadOnlyS3:
    def __init__(self, folder: Path, latency: float) -> None:
        self.folder, self.latency = folder.resolve(), latency
        self.root = str(self.folder)
        self.in_flight, self.samples, self.lists = 0, [], 0
        self.frozen = False  # objects in memory served without a look at their file (``preload``)
        self._cache: dict[str, tuple[tuple[int, int], bytes, dict]] = {}
        self._listings: dict[tuple[str, str], list[str]] = {}  # (bucket, prefix) -> its keys at its first page

    def answer(self, method: str, target: str, headers: dict[str, str]) -> Response:
        """The response to one request (its ``target``: path and query, as sent)."""
        path, _, query = target.partition("?")
        parts = unquote(path).lstrip("/").split("/", 1)
        if parts[0] == "_stats":
            return self._stats(method)
        if method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed", "this server is read-only")
        if not parts[0]:
            return _error(400, "InvalidRequest", "name a bucket: path-style addressing, /bucket/key")
        if len(parts) == 1 or not parts[1]:
            return self._bucket(method, parts[0], dict(parse_qsl(query, keep_blank_values=True)))
        return self._object(method, parts[0], parts[1], headers.get("range"))

    def _stats(self, method: str) -> Response:
        if method == "POST":
            self.samples, self.lists = [], 0
        body = {"requests": len(self.samples), "lists": self.lists,
                "in_flight_median": statistics.median(self.samples) if self.samples else 0,
                "in_flight_max": max(self.samples, default=0), "cpu_seconds": time.process_time()}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def _bucket(self, method: str, bucket: str, query: dict) -> Response:
        root = self.folder / bucket
        if not root.is_dir() or root.resolve().parent != self.folder:
            return _error(404, "NoSuchBucket", bucket)
        if method == "HEAD":
            return 200, {}, b""
        self.lists += 1
        return 200, {"Content-Type": "application/xml"}, self._list(root, bucket, query)

    def _object(self, method: str, bucket: str, key: str, wanted: str | None) -> Response:
        found = self._read(bucket, key, method == "GET")
        if found is None:
            return _error(404, "NoSuchKey", key)
        data, size, headers, head = found
        if method == "HEAD":
            return 200, {**headers, "Content-Length": str(size)}, b""
        if wanted is None:
            return 200, head or headers, data
        span = _byte_range(wanted, len(data))
        if span is None:
            return _error(416, "InvalidRange", f"{wanted} of an object of {len(data)} bytes")
        start, stop = span
        return 206, {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"}, data[start:stop]

    def _read(self, bucket: str, key: str, body: bool) -> tuple[bytes, int, dict, bytes | None] | None:
        """(the object's bytes (empty unless ``body``), its size, its headers, the head of its 200 answer
        where it is in memory), or None where there is none. Small objects are kept in memory while
        their file is unchanged: a benchmark measures the client, and this server shares its cores
        (plain strings and ``os.stat``: pathlib costs more)."""
        path = f"{self.root}/{bucket}/{key}"
        if self.frozen and (cached := self._cache.get(path)) is not None:
            return cached[1], len(cached[1]), cached[2], cached[3]
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            return None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == (info.st_mtime_ns, info.st_size):
            return cached[1], info.st_size, cached[2], cached[3]
        if not stat.S_ISREG(info.st_mode) or not os.path.realpath(path).startswith(f"{self.root}/{bucket}/"):
            return None
        headers = {"ETag": f'"{_etag(info)}"', "Last-Modified": formatdate(info.st_mtime, usegmt=True),
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if not body:
            return b"", info.st_size, headers, None
        with open(path, "rb") as f:
            data = f.read()
        if len(data) <= CACHED_OBJECT_BYTES:
            self._cache[path] = ((info.st_mtime_ns, info.st_size), data, headers, _head(200, headers, len(data)))
        return data, info.st_size, headers, None

    def preload(self) -> int:
        """Read every small object into memory now, and serve them as they are now (a store far away
        keeps its objects hot: a benchmark should not pay this machine's file reads, or a stat per
        request, to the server; a file changed later is served as it was). Returns how many."""
        self.frozen = True
        for folder, _, files in os.walk(self.root):
            rel = os.path.relpath(folder, self.root).split(os.sep)
            for name in files:
                if rel[0] != ".":
                    self._read(rel[0], "/".join([*rel[1:], name]), True)
        return len(self._cache)

    def _list(self, root: Path, bucket: str, query) -> bytes:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        limit = min(int(query.get("max-keys", MAX_KEYS)), MAX_KEYS)
        token = query.get("continuation-token", "")
        after = max(token, query.get("start-after", ""))
        # a listing's first page takes the keys as they are now; its next pages go on through them
        # (a walk of the whole bucket per page would cost this server seconds on a large feed)
        if not token or (bucket, prefix) not in self._listings:
            self._listings[(bucket, prefix)] = _keys(root, prefix)
        listed = self._listings[(bucket, prefix)]
        keys, prefixes, truncated, last = [], [], False, ""
        for key in itertools.islice(listed, bisect.bisect_right(listed, after), None):
            if delimiter and delimiter in key[len(prefix):]:
                common = key[:len(prefix) + key[len(prefix):].index(delimiter) + len(delimiter)]
                if common in prefixes:
                    continue
                item, name = ("prefix", common), common
            else:
                item, name = ("key", key), key
            if len(keys) + len(prefixes) == limit:
                truncated = True
                break
            (prefixes if item[0] == "prefix" else keys).append(name)
            last = name if item[0] == "key" else name + "\U0010ffff"  # skip the rest of a common prefix
        # encoding-type=url (as botocore asks): names URL-encoded, which XML 1.0 could not always carry
        shown = (lambda name: escape(quote_plus(name, safe="/"))) if query.get("encoding-type") == "url" else escape
        out = [f"<Name>{escape(bucket)}</Name><Prefix>{shown(prefix)}</Prefix><KeyCount>"
               f"{len(keys) + len(prefixes)}</KeyCount><MaxKeys>{limit}</MaxKeys>"
               f"<IsTruncated>{str(truncated).lower()}</IsTruncated>"]
        if delimiter:
            out.append(f"<Delimiter>{shown(delimiter)}</Delimiter>")
        if truncated:
            out.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
        for key in keys:
            info = (root / key).stat()
            modified = datetime.fromtimestamp(info.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            out.append(f"<Contents><Key>{shown(key)}</Key><LastModified>{modified}</LastModified>"
                       f"<ETag>&quot;{_etag(info)}&quot;</ETag><Size>{info.st_size}</Size>"
                       "<StorageClass>STANDARD</StorageClass></Contents>")
        out.extend(f"<CommonPrefixes><Prefix>{shown(p)}</Prefix></CommonPrefixes>" for p in prefixes)
        if query.get("encoding-type") == "url":
            out.append("<EncodingType>url</EncodingType>")
        return ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
                'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + "".join(out) + "</ListBucketResult>").encode()


class Connection(asyncio.Protocol):
    """One client connection: requests parsed as they arrive, each answered ``latency`` seconds
    later, in the order asked (HTTP/1.1 pipelining)."""

    def __init__(self, server: ReadOnlyS3) -> None:
        self.server, self.buffer, self.waiting = server, b"", deque()
        self.transport: asyncio.Transport | None = None
        self.skip = 0  # bytes of a refused request's body still to come

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            if self.skip:
                dropped = min(self.skip, len(self.buffer))
                self.buffer, self.skip = self.buffer[dropped:], self.skip - dropped
                if self.skip:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    self._send(_error(400, "RequestHeaderTooLarge", "request head over 64 kB"), close=True)
                return
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
            self._request(head)

    def _request(self, head: str) -> None:
        lines = head.split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            self.skip = int(headers.get("content-length", 0))
            if "transfer-encoding" in headers:  # a body of unknown length: nothing after it can be parsed
                raise ValueError(headers["transfer-encoding"])
        except ValueError:
            self._send(_error(400, "BadRequest", lines[0][:200]), close=True)
            return
        close = headers.get("connection", "").lower() == "close"
        server = self.server
        counted = not target.startswith("/_stats")  # the benchmark's own questions wait for nothing
        if counted:
            server.in_flight += 1
            server.samples.append(server.in_flight)
        slot = [None, method == "HEAD", close]
        self.waiting.append(slot)

        def answer() -> None:
            server.in_flight -= counted
            slot[0] = server.answer(method, target, headers)
            while self.waiting and self.waiting[0][0] is not None and self.transport is not None:
                response, head_only, last = self.waiting.popleft()
                self._send(response, head_only, last)

        if server.latency and counted:
            asyncio.get_running_loop().call_later(server.latency, answer)
        else:
            answer()

    def _send(self, response: Response, head_only: bool = False, close: bool = False) -> None:
        status, headers, body = response
        head = headers if isinstance(headers, bytes) else _head(status, headers, len(body))
        if close:
            head = head[:-2] + b"Connection: close\r\n\r\n"
        self.transport.write(head if head_only else head + body)
        if close:
            self.transport.close()
            self.transport = None


def _head(status: int, headers: dict[str, str], length: int) -> bytes:
    """The status line and headers of an answer (a Content-Length of ``length`` unless it names one)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", *(f"{k}: {v}" for k, v in headers.items())]
    if "Content-Length" not in headers:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _byte_range(wanted: str, size: int) -> tuple[int, int] | None:
    """(start, stop) of a ``Range: bytes=a-b`` header (``a-``, ``-n`` too) within ``size``; None unsatisfiable."""
    m = _RANGE.match(wanted.strip())
    if m is None or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if not first:
        start, stop = max(size - int(last), 0), size
    else:
        start, stop = int(first), min(int(last) + 1, size) if last else size
    return (start, stop) if start < stop else None


def _keys(root: Path, prefix: str):
    """The bucket's keys starting with ``prefix``, in S3's order (by UTF-8 bytes = by code point)."""
    start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
    found = []
    for folder, _, files in os.walk(start):
        rel = Path(folder).relative_to(root).as_posix()
        found.extend(f"{rel}/{f}" if rel != "." else f for f in files)
    return sorted(k for k in found if k.startswith(prefix))


def _etag(info: os.stat_result) -> str:
    return hashlib.md5(f"{info.st_size}:{info.st_mtime_ns}".encode()).hexdigest()  # an ETag, not a secret


def _error(status: int, code: str, message: str) -> Response:
    body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{escape(message)}</Message></Error>")
    return status, {"Content-Type": "application/xml"}, body.encode()


@contextlib.contextmanager
def serving(folder: Path, latency: float = 0.0, preload: bool = False) -> Iterator[str]:
    """The server on a free loopback port, in a process of its own, for the ``with`` block: its endpoint URL.
    ``preload``: every small object read into memory before the first request is taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tests.s3_server", "--folder", str(folder), "--port", str(port),
               "--latency", str(latency), *(["--preload"] if preload else [])]
    proc = subprocess.Popen(command, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the read-only S3 server did not start on port {port}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each request waits")
    parser.add_argument("--preload", action="store_true", help="read every object up to 1 MB into memory first")
    args = parser.parse_args()
    s3 = ReadOnlyS3(args.folder, args.latency)
    preloaded = s3.preload() if args.preload else 0
    print(json.dumps({"port": args.port, "folder": str(args.folder), "preloaded": preloaded}), flush=True)
    asyncio.run(_serve(s3, args.port))


async def _serve(s3: ReadOnlyS3, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: Connection(s3), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    main()
