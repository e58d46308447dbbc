"""A lean HTTP/1.1 client for GETs of many small objects: keep-alive connections pooled per
host, one request at a time on each, answers whose length is known.

aiohttp spends about 100 us of CPU on a request around the bytes (README, "Images in a bucket":
181 us of client CPU a GET through aiohttp, 87 us on this client, signing included); at
thousands of GETs a second, on the cores that also decode and predict, that is seconds a night.
What this client does not read (a chunked answer, one without a length) it refuses with
``UnsupportedError``, and the caller asks aiohttp instead; proxies are the caller's too.

Errors: a connection that cannot be made, is lost or goes quiet for the read timeout raises
``OSError`` (``ConnectionError``, ``TimeoutError``): transient, for the caller to retry. A
connection kept idle that the server closed meanwhile is replaced once, silently, as browsers
and aiohttp do.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict


class UnsupportedError(Exception):
    """An answer this client does not read (its framing): ask another client."""


class _Connection(asyncio.Protocol):
    """One connection: a request written, its answer parsed as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.loop, self.read_timeout = loop, read_timeout
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.head: tuple[int, str, dict[str, str]] | None = None
        self.length = 0
        self.received = False  # any byte of the current answer
        self.reusable = True
        self.last_data = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.reusable = False
        self._fail(ConnectionResetError(f"the connection was closed by the server ({exc or 'end of stream'})"))

    def eof_received(self) -> bool:
        self.reusable = False
        return False  # the transport closes itself; connection_lost follows

    def request(self, data: bytes) -> asyncio.Future:
        self.waiter = self.loop.create_future()
        self.received, self.head = False, None
        self.last_data = self.loop.time()
        if self.timer is None:  # one timer across requests, not one made and cancelled per request
            self.timer = self.loop.call_at(self.last_data + self.read_timeout, self._check_quiet)
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.reusable = False  # bytes nobody asked for: the stream is out of step
            self.transport.close()
            return
        self.received = True
        self.last_data = self.loop.time()
        self.buffer += data
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            try:
                self.head = _parse_head(bytes(self.buffer[:end]))
            except ValueError as exc:
                self._fail(ConnectionError(f"an answer that is not HTTP/1.1: {exc}"), close=True)
                return
            del self.buffer[:end + 4]
            status, _, headers = self.head
            if (status < 200 or "transfer-encoding" in headers
                    or ("content-length" not in headers and status not in (204, 304))):
                self._fail(UnsupportedError(headers.get("transfer-encoding", f"{status}, no content-length")),
                           close=True)
                return
            # a 204 or 304 has no body, whatever length it names (RFC 9110 8.6)
            self.length = 0 if status in (204, 304) else int(headers["content-length"])
            if headers.get("connection") == "close":
                self.reusable = False
        if len(self.buffer) >= self.length:
            if len(self.buffer) > self.length:  # more than the answer: nothing more is trusted on it
                self.reusable = False
            # one copy of the body, not two (a slice, then bytes): objects may be hundreds of MB
            body = bytes(self.buffer) if len(self.buffer) == self.length else bytes(self.buffer[:self.length])
            self.buffer.clear()
            self.waiter.set_result((*self.head, body))

    def _check_quiet(self) -> None:
        self.timer = None
        if self.waiter is None or self.waiter.done():  # idle: the next request arms it again
            return
        quiet = self.loop.time() - self.last_data
        if quiet >= self.read_timeout:
            self._fail(TimeoutError(f"no data for {self.read_timeout:g} s"), close=True)
        else:
            self.timer = self.loop.call_at(self.last_data + self.read_timeout, self._check_quiet)

    def _fail(self, exc: BaseException, close: bool = False) -> None:
        self._cancel_timer()
        if close:
            self.reusable = False
            if self.transport is not None:
                self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """(status, reason, headers): header names and values lower-cased (only their framing is read)."""
    first, _, rest = head.decode("latin-1").partition("\r\n")
    version, status, *reason = first.split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(first[:80])
    headers = {}
    for line in rest.lower().split("\r\n") if rest else ():
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"header line {line[:80]!r}")
        name, value = name.strip(), value.strip()
        if name == "content-length" and (not (value.isascii() and value.isdigit())
                                         or headers.setdefault(name, value) != value):
            # '-1', '1_0', '+5' (int() takes them all) or two lengths: no body can be trusted to it
            first = f" after {headers[name]!r}" if name in headers else ""
            raise ValueError(f"content-length {value[:40]!r}{first}")
        headers[name] = value
    if version == "HTTP/1.0" and headers.get("connection") != "keep-alive":
        headers["connection"] = "close"
    return int(status), reason[0] if reason else "", headers


class Pool:
    """Keep-alive connections per (scheme, host, port), at most ``limit`` requests at once in all;
    made and used on one event loop."""

    def __init__(self, limit: int, tls: ssl.SSLContext | bool, connect_timeout: float, read_timeout: float) -> None:
        self.limit, self.connect_timeout, self.read_timeout = limit, connect_timeout, read_timeout
        if tls is False:  # botocore's verify=False: no certificate checks
            tls = ssl.create_default_context()
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        self.tls = tls
        self._idle: dict[tuple[str, str, int], list[_Connection]] = defaultdict(list)
        self._slots: asyncio.Semaphore | None = None

    async def get(self, scheme: str, host: str, port: int, target: str,
                  headers: dict[str, str]) -> tuple[int, str, bytes]:
        """(status, reason, body) of a GET of ``target`` (path and query, encoded) with ``headers``
        (``host`` among them)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        request = "".join([f"GET {target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items()),
                           "\r\n"]).encode("latin-1")
        where = (scheme, host, port)
        async with self._slots:
            for reused in (True, False):  # an idle connection the server closed meanwhile: once more, anew
                conn = self._checkout(where) if reused else None
                if conn is None:
                    reused, conn = False, await self._connect(scheme, host, port)
                try:
                    status, reason, _, body = await conn.request(request)
                except ConnectionResetError:
                    if reused and not conn.received:
                        continue
                    raise
                except BaseException:
                    conn.reusable = False
                    if conn.transport is not None:
                        conn.transport.close()
                    raise
                self._checkin(where, conn)
                return status, reason, body
        raise AssertionError("unreachable")

    def _checkout(self, where: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle[where]
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _checkin(self, where: tuple[str, str, int], conn: _Connection) -> None:
        if conn.reusable and len(self._idle[where]) < self.limit:
            self._idle[where].append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self.tls if scheme == "https" else None
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(loop, self.read_timeout), host, port, ssl=tls,
                                   server_hostname=host if tls else None),
            self.connect_timeout)
        return conn

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
