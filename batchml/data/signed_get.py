"""One signed GET per object on S3, without botocore on the request path.

botocore builds, signs and parses each request in about 1 ms of CPU: at thousands of small
objects a second that, not the store, limits a worker (measured 2026-12-03: 950 GETs/s from
s3fs against 7,800/s here, at an eighth of the CPU per request). Reading a whole small object
needs none of its machinery: a GET signed with Signature Version 4 does, sent on a lean HTTP/1.1
client (``http1``: a quarter of aiohttp's CPU per request), or on aiohttp through a proxy.

Everything else about the filesystem comes from s3fs's own client: its endpoint, region,
credentials (explicit, the environment, a profile or an instance role: frozen per batch, so
refreshed ones stay fresh), TLS verification, the environment's proxies (as botocore's),
timeouts and the connection pool's size (what the reads of all threads share); nothing else
from the environment (aiohttp's ``trust_env`` would also send a ~/.netrc entry for the host as
Basic auth, and refuse it beside the signature). Where this path cannot stand in for s3fs
(requester pays, extra request arguments, object versions, another addressing style, proxies in
the client's config, a CA bundle that cannot be loaded) it is not used. Any answer but the
object (200) or a transient failure is left to s3fs: a redirect to another region, a denied
request or a missing key get s3fs's own handling and errors, and after ``DECLINED_AFTER`` such
answers a filesystem goes back to s3fs for good.
Transient failures (a 5xx, 429, a dropped connection, a timeout) are retried as botocore's
configured ``max_attempts`` would; then the exception is returned to the caller's retries.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import hmac
import inspect
import random
import ssl
import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

from batchml.data.http1 import Pool, UnsupportedError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DECLINED_AFTER = 20  # answers left to s3fs (not 200, not transient) before this path is given up
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_BACKOFF_S = 0.05  # the first retry's wait at most; doubled each time (jittered), as botocore's standard mode


class DeclinedError(Exception):
    """An answer this path leaves to s3fs (its status)."""


@dataclass(frozen=True)
class Credentials:
    key: str
    secret: str
    token: str | None


class Where(NamedTuple):
    """Where one request goes, as plain strings: a URL object per request (yarl's) cost more CPU
    than the signature, at thousands of GETs a second."""

    scheme: str
    host: str  # the Host header (the endpoint's port included)
    address: str  # the host name connected to
    port: int
    target: str  # path and query, encoded
    canonical: str  # SigV4's canonical URI
    query: str  # and canonical query string

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"


class SignedGet:
    """GETs of whole objects for one s3fs filesystem, on its event loop."""

    def __init__(self, fs, endpoint: str, region: str, attempts: int, timeouts: tuple[float, float],
                 verify, virtual_host: bool, pool: int = 10) -> None:
        self.fs, self.endpoint, self.region, self.pool = fs, endpoint.rstrip("/"), region, pool
        self._endpoint = parts = urlsplit(self.endpoint)
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        # (a property of urlsplit's answer, parsed at each call; an IPv6 zone's '%25' decoded, as yarl did)
        self._hostname = unquote(parts.hostname or "")
        self.attempts, self.timeouts, self.verify, self.virtual_host = attempts, timeouts, verify, virtual_host
        self.declined = 0
        self._session = None
        self._pool: Pool | None = None
        self._tls: ssl.SSLContext | bool | None = None
        self._proxies: dict[str, tuple] = {}  # host -> (the environment's proxy for it, its headers)
        self._keys: dict[tuple, bytes] = {}  # (secret, day, region) -> signing key
        self._signing: tuple = (None, None, None)  # (creds, host, now, *what their requests share)

    @classmethod
    async def for_fs(cls, fs) -> SignedGet | None:
        """The signed-GET path of an s3fs filesystem, or None where s3fs must do the reads."""
        if (type(fs).__name__ != "S3FileSystem" or fs.requester_pays or fs.version_aware
                or fs.s3_additional_kwargs or getattr(fs, "req_kw", None)):
            return None
        await fs.set_session()
        meta = fs.s3.meta
        style = (meta.config.s3 or {}).get("addressing_style", "auto")
        if (style not in ("auto", "path", None) or not meta.endpoint_url or meta.config.proxies
                or meta.config.client_cert):
            return None
        endpoint = meta.endpoint_url
        # botocore addresses AWS's own endpoints by bucket host name, any other by path
        virtual = urlsplit(endpoint).hostname.endswith(".amazonaws.com") and style != "path"
        retries = meta.config.retries or {}
        # botocore's max_attempts counts the retries after the first request; total_max_attempts all of them
        attempts = int(retries.get("total_max_attempts") or (retries["max_attempts"] + 1 if "max_attempts" in retries
                                                              else 3))
        timeouts = (float(meta.config.connect_timeout or 60), float(meta.config.read_timeout or 60))
        # the CA bundle as botocore resolved it: verify=, the profile's ca_bundle or AWS_CA_BUNDLE,
        # then REQUESTS_CA_BUNDLE (a private CA named in any of them must be trusted here too)
        verify = fs.s3._endpoint.http_session._verify
        signed = cls(fs, endpoint, meta.region_name or "us-east-1", max(1, attempts), timeouts, verify, virtual,
                     int(meta.config.max_pool_connections or 10))
        signed.tls()  # a CA bundle that cannot be loaded (missing on this worker) is s3fs's to report, not a read's
        _OPEN.append(signed)
        return signed

    async def credentials(self) -> Credentials | None:
        """The client's credentials now (None: anonymous, requests unsigned)."""
        if self.fs.anon:
            return None
        creds = self.fs.s3._get_credentials()
        if creds is None:
            return None
        frozen = creds.get_frozen_credentials()
        if inspect.isawaitable(frozen):
            frozen = await frozen
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    async def get(self, path: str, creds: Credentials | None, query: dict[str, str] | None = None) -> bytes:
        """The object's bytes (or, with ``query``, the answer to that request of ``path``: a bucket's
        listing); raises ``DeclinedError`` for an answer s3fs should handle, or the last transient
        failure's exception once the attempts are spent."""
        import aiohttp

        where = self.where(path, query)
        proxy, proxy_headers = self._proxy(where.host, where.address)
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(random.uniform(0, _BACKOFF_S * 2 ** attempt))
            headers = self.signed(where.host, where.canonical, creds, query=where.query)
            try:
                status, reason, body = await self._send(where, headers, proxy, proxy_headers)
            except (aiohttp.ClientError, OSError) as exc:  # OSError: a timeout, a lost or refused connection
                failure: Exception = exc
                continue
            if status == 200:
                return body
            if status not in TRANSIENT_STATUS:
                raise DeclinedError(status)
            failure = OSError(f"{status} {reason} from {where.host} for {path}")
        raise failure

    async def _send(self, where: Where, headers: dict[str, str], proxy, proxy_headers) -> tuple[int, str, bytes]:
        """(status, reason, body): on the lean client (``http1``), or aiohttp through a proxy or
        for an answer the lean one does not read."""
        if proxy is None:
            if self._pool is None:
                self._pool = Pool(self.pool, self.tls(), *self.timeouts)
            try:
                return await self._pool.get(where.scheme, where.address, where.port, where.target, headers)
            except UnsupportedError:
                pass
        from yarl import URL

        if proxy_headers and where.scheme == "http":
            # a plain-HTTP GET goes to the proxy itself: its credentials ride on the request (aiohttp
            # sends ``proxy_headers`` only on the CONNECT of an https request)
            headers = {**headers, **proxy_headers}
        async with (await self._client()).get(URL(where.url, encoded=True), headers=headers, allow_redirects=False,
                                              proxy=proxy, proxy_headers=proxy_headers) as response:
            return response.status, response.reason or "", await response.read()

    def where(self, path: str, query: dict[str, str] | None = None) -> Where:
        """Where a GET of ``bucket/key`` goes, or of ``bucket`` alone with a ``query``."""
        bucket, _, key = path.partition("/")
        parts = self._endpoint
        if self.virtual_host and _dns_name(bucket):  # as botocore: no dots, 3 to 63 of [a-z0-9-]
            host, address, canonical = f"{bucket}.{parts.netloc}", f"{bucket}.{self._hostname}", \
                "/" + quote(key, safe="/~")
        else:
            host, address = parts.netloc, self._hostname
            canonical = "/" + quote(f"{bucket}/{key}" if key else bucket, safe="/~")
            canonical = (parts.path.rstrip("/") + canonical) if parts.path not in ("", "/") else canonical
        # SigV4: each name and value percent-encoded but for A-Z a-z 0-9 - _ . ~, sorted by name
        encoded = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())) \
            if query else ""
        return Where(parts.scheme, host, address, self._port, canonical + (f"?{encoded}" if encoded else ""),
                     canonical, encoded)

    def signed(self, host: str, canonical: str, creds: Credentials | None, now: str | None = None,
               query: str = "") -> dict[str, str]:
        """Signature Version 4 headers for a GET with no body and the canonical ``query`` string, at
        ``now`` (UTC ``YYYYMMDDTHHMMSSZ``; the time of the call by default)."""
        if creds is None:
            return {"host": host}
        now = now or _now()
        context = self._signing
        if context[:3] != (creds, host, now):
            context = self._signing = (creds, host, now, *self._context(host, creds, now))
        headers, block, prefix, authorization, key = context[3:]
        request = f"GET\n{canonical}\n{query}\n{block}"
        to_sign = prefix + hashlib.sha256(request.encode()).hexdigest()
        return {**headers, "Authorization": authorization + hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()}

    def _context(self, host: str, creds: Credentials, now: str) -> tuple[dict[str, str], str, str, str, bytes]:
        """What every request signed at ``now`` for ``host`` shares (made once a second, not per request):
        its headers, the canonical request after the query, the string to sign before the request's
        hash, the Authorization header before the signature, the signing key."""
        headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": now}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = ";".join(sorted(headers))
        block = "\n".join([*(f"{n}:{headers[n]}" for n in sorted(headers)), "", names, EMPTY_SHA256])
        scope = f"{now[:8]}/{self.region}/s3/aws4_request"
        return (headers, block, f"AWS4-HMAC-SHA256\n{now}\n{scope}\n",
                f"AWS4-HMAC-SHA256 Credential={creds.key}/{scope}, SignedHeaders={names}, Signature=",
                self._key(creds.secret, now[:8]))

    def _key(self, secret: str, day: str) -> bytes:
        if (key := self._keys.get((secret, day, self.region))) is None:
            key = ("AWS4" + secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day, self.region): key}  # one day's key at a time
        return key

    def tls(self) -> ssl.SSLContext | bool:
        if self._tls is None:
            self._tls = _ssl(self.verify)
        return self._tls

    def _proxy(self, host: str, address: str) -> tuple[object | None, dict[str, str] | None]:
        """The environment's proxy for ``host`` (as in the Host header, a port included; ``address``:
        its name alone) and its Proxy-Authorization: HTTP(S)_PROXY less NO_PROXY, where a
        ``name:port`` entry counts too, as botocore's; once per host."""
        if (found := self._proxies.get(host)) is None:
            from urllib.request import proxy_bypass

            from aiohttp.helpers import get_env_proxy_for_url
            from yarl import URL

            try:
                if proxy_bypass(host):  # NO_PROXY names the host, or the host and its port
                    raise LookupError(host)
                proxy, auth = get_env_proxy_for_url(URL.build(scheme=self._endpoint.scheme, host=address))
            except LookupError:
                proxy, auth = None, None
            found = self._proxies[host] = (proxy, {"Proxy-Authorization": auth.encode()} if auth else None)
        return found

    async def _client(self):
        import aiohttp

        if self._session is None or self._session.closed:
            # botocore's pool size: two partitions read at once (a task and its read-ahead) share it
            connector = aiohttp.TCPConnector(limit=self.pool, ssl=self.tls())
            timeout = aiohttp.ClientTimeout(sock_connect=self.timeouts[0], sock_read=self.timeouts[1])
            # trust_env off: proxies come from ``_proxy``; a ~/.netrc entry must not replace the signature
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                                  auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._session is not None:
            await self._session.close()


_CLOCK: list = [0, ""]  # the second and its x-amz-date: formatted once a second, not per request


def _now() -> str:
    second = int(time.time())
    if _CLOCK[0] != second:
        _CLOCK[:] = [second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))]
    return _CLOCK[1]


_OPEN: list[SignedGet] = []  # closed at exit: an unclosed aiohttp session logs an error when collected


def _close_all() -> None:
    if not _OPEN:  # nothing opened (an import at exit would fail: "can't register atexit after shutdown")
        return
    from fsspec.asyn import sync

    for signed in _OPEN:
        with contextlib.suppress(Exception):  # the loop is gone already: nothing is left to close
            sync(signed.fs.loop, signed.close, timeout=2)


atexit.register(_close_all)


@functools.lru_cache(maxsize=1024)
def _dns_name(bucket: str) -> bool:
    from botocore.utils import check_dns_name

    return check_dns_name(bucket)


def _ssl(verify) -> ssl.SSLContext | bool:
    """botocore's ``verify``: False (no checks), a CA bundle's path, or the default (certifi's bundle)."""
    if verify is False:
        return False
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()
