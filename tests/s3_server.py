"""A small read-only S3-compatible server over a local folder, for tests and benchmarks that need
many thousand GETs a second at a chosen latency (moto answers a few hundred).

    python -m tests.s3_server --folder DIR [--port 9000] [--latency 0.02]

Each top-level folder of DIR is a bucket, each file under it an object. It speaks what s3fs
uses to read: GET and HEAD of an object, HEAD of a bucket, ListObjectsV2 (prefix, delimiter,
max-keys, continuation-token, start-after), path-style addressing, any credentials. Writes are
refused (405). Every request waits ``--latency`` seconds before it is answered, as a store far
away does, and the number of requests in flight is sampled as each arrives:
``GET /_stats`` returns ``{"requests": N, "in_flight_median": M, "in_flight_max": X, "lists": L,
"cpu_seconds": C}`` (C: the server's own CPU time so far) and ``POST /_stats`` resets the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web

MAX_KEYS = 1000
CACHED_OBJECT_BYTES = 1 << 20  # objects up to this size are served from memory


class ReadOnlyS3:
    def __init__(self, folder: Path, latency: float) -> None:
        self.folder, self.latency = folder.resolve(), latency
        self.in_flight, self.samples, self.lists = 0, [], 0
        self._cache: dict[Path, tuple[tuple[int, int], bytes, dict]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/_stats", self.stats)
        app.router.add_route("*", "/{bucket}", self.bucket)
        app.router.add_route("*", "/{bucket}/", self.bucket)
        app.router.add_route("*", "/{bucket}/{key:.+}", self.object)
        return app

    async def stats(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.samples, self.lists = [], 0
        body = {"requests": len(self.samples), "lists": self.lists,
                "in_flight_median": statistics.median(self.samples) if self.samples else 0,
                "in_flight_max": max(self.samples, default=0), "cpu_seconds": time.process_time()}
        return web.json_response(body)

    async def _wait(self) -> None:
        self.in_flight += 1
        self.samples.append(self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1

    async def bucket(self, request: web.Request) -> web.StreamResponse:
        await self._wait()
        root = self.folder / request.match_info["bucket"]
        if request.method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed", "this server is read-only")
        if not root.is_dir():
            return _error(404, "NoSuchBucket", request.match_info["bucket"])
        if request.method == "HEAD":
            return web.Response()
        self.lists += 1
        return web.Response(body=self._list(root, request.match_info["bucket"], request.query),
                            content_type="application/xml")

    async def object(self, request: web.Request) -> web.StreamResponse:
        await self._wait()
        if request.method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed", "this server is read-only")
        found = self._read(request.match_info["bucket"], request.match_info["key"], request.method == "GET")
        if found is None:
            return _error(404, "NoSuchKey", request.match_info["key"])
        data, size, headers = found
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(size)})
        if request.http_range.start is not None or request.http_range.stop is not None:
            part = data[request.http_range]
            start = request.http_range.start or 0
            headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
            return web.Response(status=206, body=part, headers=headers)
        return web.Response(body=data, headers=headers)

    def _read(self, bucket: str, key: str, body: bool) -> tuple[bytes, int, dict] | None:
        """(the object's bytes (empty unless ``body``), its size, its headers), or None where there is
        none. Small objects are kept in memory while their file is unchanged: a benchmark measures the
        client, and this server shares its cores."""
        path = self.folder / bucket / key
        try:
            stat = path.stat()
        except OSError:
            return None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == (stat.st_mtime_ns, stat.st_size):
            return cached[1], stat.st_size, cached[2]
        if not path.is_file() or self.folder not in path.resolve().parents:
            return None
        headers = {"ETag": f'"{_etag(stat)}"', "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if not body:
            return b"", stat.st_size, headers
        data = path.read_bytes()
        if len(data) <= CACHED_OBJECT_BYTES:
            self._cache[path] = ((stat.st_mtime_ns, stat.st_size), data, headers)
        return data, stat.st_size, headers

    def _list(self, root: Path, bucket: str, query) -> bytes:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        limit = min(int(query.get("max-keys", MAX_KEYS)), MAX_KEYS)
        after = max(query.get("continuation-token", ""), query.get("start-after", ""))
        keys, prefixes, truncated, last = [], [], False, ""
        for key in _keys(root, prefix):
            if key <= after:
                continue
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
        out = [f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>"
               f"{len(keys) + len(prefixes)}</KeyCount><MaxKeys>{limit}</MaxKeys>"
               f"<IsTruncated>{str(truncated).lower()}</IsTruncated>"]
        if delimiter:
            out.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        if truncated:
            out.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
        for key in keys:
            stat = (root / key).stat()
            modified = datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            out.append(f"<Contents><Key>{escape(key)}</Key><LastModified>{modified}</LastModified>"
                       f"<ETag>&quot;{_etag(stat)}&quot;</ETag><Size>{stat.st_size}</Size>"
                       "<StorageClass>STANDARD</StorageClass></Contents>")
        out.extend(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
        return ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
                'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + "".join(out) + "</ListBucketResult>").encode()


def _keys(root: Path, prefix: str):
    """The bucket's keys starting with ``prefix``, in S3's order (by UTF-8 bytes = by code point)."""
    start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
    found = []
    for folder, _, files in os.walk(start):
        rel = Path(folder).relative_to(root).as_posix()
        found.extend(f"{rel}/{f}" if rel != "." else f for f in files)
    return sorted(k for k in found if k.startswith(prefix))


def _etag(stat: os.stat_result) -> str:
    return hashlib.md5(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()  # an ETag, not a secret


def _error(status: int, code: str, message: str) -> web.Response:
    body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{escape(message)}</Message></Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


@contextlib.contextmanager
def serving(folder: Path, latency: float = 0.0) -> Iterator[str]:
    """The server on a free loopback port, in a process of its own, for the ``with`` block: its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.s3_server", "--folder", str(folder), "--port", str(port),
                             "--latency", str(latency)], cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL)
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
    args = parser.parse_args()
    print(json.dumps({"port": args.port, "folder": str(args.folder)}), flush=True)
    web.run_app(ReadOnlyS3(args.folder, args.latency).app(), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
