"""The lean HTTP/1.1 client of the signed GETs (``batchml.data.http1``) against a scripted server:
keep-alive, a kept connection the server dropped, answers it does not read (to aiohttp), a stalled
or cut answer (an error, never a short body), and TLS with a private CA."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from batchml.data.http1 import Pool, UnsupportedError
from batchml.data.signed_get import SignedGet
from tests.test_remote_tls import write_certificates

BODY = b"0123456789"


class Scripted(asyncio.Protocol):
    """Answers by path: /ok, /drop-next (answers, then drops the next request unanswered, as a
    server that closed an idle connection), /chunked, /stall (3 of 10 bytes, then nothing), /cut
    (3 of 10 bytes, then closes)."""

    served: list[str]

    def __init__(self, served: list[str], dropping: set) -> None:
        self.served, self.dropping, self.buffer = served, dropping, b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            if self in self.dropping:
                self.transport.close()
                return
            self.served.append(path)
            if path == "/drop-next":
                self.dropping.add(self)
            if path == "/chunked":
                self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n")
            elif path in ("/stall", "/cut"):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n012")
                if path == "/cut":
                    self.transport.close()
            else:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + BODY)


async def _scripted(tls: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int, list[str]]:
    served: list[str] = []
    dropping: set = set()
    server = await asyncio.get_running_loop().create_server(lambda: Scripted(served, dropping), "127.0.0.1", 0,
                                                            ssl=tls)
    return server, server.sockets[0].getsockname()[1], served


def _run(check) -> None:
    async def main() -> None:
        server, port, served = await _scripted()
        async with server:
            await check(Pool(4, False, 2.0, 0.3), port, served)

    asyncio.run(main())


def _get(pool: Pool, port: int, path: str, scheme: str = "http"):
    return pool.get(scheme, "127.0.0.1", port, path, {"host": f"127.0.0.1:{port}"})


def test_one_connection_serves_request_after_request():
    async def check(pool, port, served):
        for _ in range(5):
            assert await _get(pool, port, "/ok") == (200, "OK", BODY)
        assert len(pool._idle[("http", "127.0.0.1", port)]) == 1

    _run(check)


def test_a_kept_connection_the_server_dropped_is_replaced_once_silently():
    async def check(pool, port, served):
        assert (await _get(pool, port, "/drop-next"))[2] == BODY
        assert (await _get(pool, port, "/ok"))[2] == BODY  # written on the dropped connection, then anew
        assert served == ["/drop-next", "/ok"]

    _run(check)


def test_a_chunked_answer_is_left_to_another_client():
    async def check(pool, port, served):
        with pytest.raises(UnsupportedError):
            await _get(pool, port, "/chunked")
        signer = SignedGet(None, f"http://127.0.0.1:{port}", "us-east-1", 1, (2.0, 2.0), None, False)
        where = signer.where("chunked")  # a bucket-less path: /chunked
        try:
            assert await signer._send(where, {"host": f"127.0.0.1:{port}"}, None, None) == (200, "OK", BODY)
        finally:
            await signer.close()

    _run(check)


def test_a_stalled_or_cut_answer_is_an_error_never_a_short_body():
    async def check(pool, port, served):
        with pytest.raises(TimeoutError):
            await _get(pool, port, "/stall")
        with pytest.raises(ConnectionError):
            await _get(pool, port, "/cut")
        assert (await _get(pool, port, "/ok"))[2] == BODY  # and the pool goes on

    _run(check)


def test_one_read_timer_across_requests_still_times_out_a_stall_on_a_kept_connection():
    """The read timer outlives an answer (one per connection, not one per request): a connection
    idle past the timeout is not failed, and a later stall on it still is, after the timeout."""
    async def check(pool, port, served):
        assert (await _get(pool, port, "/ok"))[2] == BODY
        await asyncio.sleep(0.45)  # the first request's timer fires while the connection is idle
        assert (await _get(pool, port, "/ok"))[2] == BODY
        assert served == ["/ok", "/ok"] and len(pool._idle[("http", "127.0.0.1", port)]) == 1
        await asyncio.sleep(0.2)  # the second request's timer, armed anew, is due during the next request
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await _get(pool, port, "/stall")
        assert 0.25 <= asyncio.get_running_loop().time() - started < 2.0  # the timeout, counted from that request
        assert not pool._idle[("http", "127.0.0.1", port)]  # asked on the kept connection, dropped after

    _run(check)


def test_tls_with_a_private_ca_is_verified(tmp_path):
    certs = write_certificates(tmp_path)
    served_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served_tls.load_cert_chain(certs["cert"], certs["key"])

    async def main() -> None:
        server, port, _ = await _scripted(served_tls)
        async with server:
            trusted = Pool(2, ssl.create_default_context(cafile=certs["ca"]), 2.0, 2.0)
            assert (await _get(trusted, port, "/ok", "https"))[2] == BODY
            with pytest.raises(ssl.SSLCertVerificationError):
                await _get(Pool(2, ssl.create_default_context(), 2.0, 2.0), port, "/ok", "https")
            assert (await _get(Pool(2, False, 2.0, 2.0), port, "/ok", "https"))[2] == BODY  # verify=False
            trusted.close()

    asyncio.run(main())


ODD = {  # answers a lax or broken server (or a proxy on the way) might send
    "/negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n0123456789",  # int() took it: a short body
    "/underscore": b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789",
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 12\r\n\r\n0123456789",
    "/length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 10, 10\r\n\r\n0123456789",
}


class Raw(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            self.transport.write(ODD.get(path) or b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")


def test_a_length_that_is_not_one_number_is_an_error_never_a_wrong_body(caplog):
    """'-1' gave the body less its last byte, two lengths waited out the read timeout, a list raised
    inside the protocol (asyncio's "Fatal error" on stderr); and a 304 has no body whatever its length says."""
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Raw, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            pool = Pool(2, False, 2.0, 30.0)
            for path in ODD:
                with pytest.raises(ConnectionError, match="content-length"):
                    await asyncio.wait_for(_get(pool, port, path), 5)
            assert await asyncio.wait_for(_get(pool, port, "/not-modified"), 5) == (304, "Not Modified", b"")
            pool.close()

    with caplog.at_level("ERROR", logger="asyncio"):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.name == "asyncio"]
