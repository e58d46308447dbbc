"""Many small objects read at once, on any fsspec filesystem: enough requests in flight to
cover the store's latency, and no more than a memory bound allows.

On object storage one GET of a small JPEG takes 10 to 50 ms, whatever its size: a worker
that should read 4,000 images/s at 20 ms needs about 80 requests in flight all the time.
How many is derived from what is observed (``InFlight``): the typical time of one request
and the typical size of an object, per filesystem and process, so a worker learns its
store's latency from its first partition and keeps it for the next.

Async filesystems (s3fs, gcsfs, http) get coroutines on their own event loop, and on s3fs a
signed GET that skips botocore (``signed_get``: an eighth of its CPU per request); the others
(a local disk, sftp...) are read in the caller's thread while each request is quick, and by a
thread pool once requests are seen to be slow. Each path's bytes come back, or the exception that
stopped it: retrying, and which errors are transient, is the caller's (``inputs``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fsspec.asyn import AsyncFileSystem, sync
from fsspec.implementations.local import LocalFileSystem

from batchml.data.signed_get import DECLINED_AFTER, DeclinedError, SignedGet

# the knobs, per worker process
MIN_IN_FLIGHT = 8  # requests in flight even where a request is instant (a local disk)
MAX_IN_FLIGHT = 512  # and at most: also the size of s3fs's connection pool (store.S3_DEFAULTS)
# what one worker should be able to read: twice what it decodes and predicts (about 4,000 images/s on
# two cores), so that a partition is read in half its predict time, tails and the read-ahead's included
# (at 5,000/s and 256 at most, 50 ms requests left the model waiting on 20 of 25 partitions)
TARGET_REQUESTS_PER_S = 10_000
MEMORY_BOUND_BYTES = 256 << 20  # object bytes being received at once (large objects get fewer requests)
FIRST_LATENCY_S = 0.02  # the latency assumed before the first request has answered
FIRST_SIZE_BYTES = 64 << 10  # and the object size
_SMOOTHING = 0.1  # weight of each new observation in the moving averages
SEQUENTIAL_BELOW_S = 0.001  # a synchronous filesystem answering faster than this is read without threads
_PROBED = 8  # requests timed one at a time before a synchronous filesystem may get threads


@dataclass
class InFlight:
    """How many requests to keep in flight on one filesystem: the latency and object size
    seen so far (moving averages), and the most that were in flight (for benchmarks)."""

    latency_s: float = FIRST_LATENCY_S
    size_bytes: float = FIRST_SIZE_BYTES
    peak: int = 0
    seen: int = 0  # requests observed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def limit(self, remaining: int) -> int:
        """Requests to have in flight for ``remaining`` objects: Little's law (rate x latency),
        within ``MIN_IN_FLIGHT``..``MAX_IN_FLIGHT`` and the memory bound."""
        wanted = math.ceil(TARGET_REQUESTS_PER_S * self.latency_s)
        by_memory = max(1, int(MEMORY_BOUND_BYTES // max(self.size_bytes, 1)))
        return max(1, min(remaining, by_memory, most_in_flight(), max(MIN_IN_FLIGHT, wanted)))

    def observe(self, seconds: float, size: int) -> None:
        with self._lock:
            self.seen += 1
            weight = max(_SMOOTHING, 1 / self.seen)  # the plain mean until it has seen enough, then moving
            self.latency_s += weight * (seconds - self.latency_s)
            self.size_bytes += weight * (size - self.size_bytes)


def most_in_flight() -> int:
    """``MAX_IN_FLIGHT``, or fewer where this process may open too few files: each request holds a
    socket, beside the process's files, Parquet writers and Dask's own connections. A soft limit
    below four sockets per request (1,024 on many systems) is raised toward the hard one first, as
    servers do; what stays below it gets a quarter of the limit."""
    return max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, _open_files() // 4))


@functools.cache
def _open_files() -> int:
    """The soft open-file limit, once raised toward the hard one where it is below what
    ``MAX_IN_FLIGHT`` needs (never lowered); a large number where there is no limit to read."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 1 << 30
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * MAX_IN_FLIGHT
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    if soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else max(soft, min(hard, wanted))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):  # not allowed here: work within the limit there is
            pass
    return soft


_OBSERVED: dict[int, InFlight] = {}  # id(filesystem) -> what was seen on it in this process
_OBSERVED_LOCK = threading.Lock()


def observed(fs) -> InFlight:
    """The ``InFlight`` of a filesystem instance (fsspec caches instances, so one per store)."""
    with _OBSERVED_LOCK:
        return _OBSERVED.setdefault(id(fs), InFlight())


def fetch_many(fs, paths: list[str], in_flight: InFlight | None = None) -> dict[str, bytes | BaseException]:
    """Each path's bytes, or the exception that stopped it, read with ``in_flight.limit``
    requests at once (the filesystem's own ``observed`` by default)."""
    if not paths:
        return {}
    in_flight = in_flight or observed(fs)
    if isinstance(fs, AsyncFileSystem) and getattr(fs, "async_impl", False):
        got = sync(fs.loop, _gather, fs, paths, in_flight)
    else:
        got = _threaded(fs, paths, in_flight)
    return dict(zip(paths, got, strict=True))


async def _gather(fs, paths: list[str], in_flight: InFlight) -> list:
    """A pool of reader coroutines that grows as latency is learnt: each takes the next path
    until none is left, and starts another reader while fewer run than ``limit`` wants."""
    out: list = [None] * len(paths)
    read = await _whole_object_reader(fs)
    queue = iter(range(len(paths)))
    running = 0
    readers: list[asyncio.Task] = []

    async def reader() -> None:
        nonlocal running
        for i in queue:
            started = time.perf_counter()  # timed here, not in a wrapping coroutine: one less per request
            try:
                out[i] = data = await read(paths[i])
            except Exception as exc:
                out[i] = exc
            else:
                in_flight.observe(time.perf_counter() - started, len(data))
            remaining = len(paths) - i - 1
            while running < in_flight.limit(remaining):
                running += 1
                in_flight.peak = max(in_flight.peak, running)
                readers.append(asyncio.ensure_future(reader()))
        running -= 1

    running = min(len(paths), in_flight.limit(len(paths)))
    in_flight.peak = max(in_flight.peak, running)
    readers.extend(asyncio.ensure_future(reader()) for _ in range(running))
    while readers:  # readers spawned while we wait are awaited too
        await readers.pop()
    return out


_SIGNED: dict[int, SignedGet | None] = {}  # id(filesystem) -> its signed-GET path, if it has one


async def signed_for(fs) -> SignedGet | None:
    """The filesystem's signed-GET path (made once per filesystem), or None where s3fs must do the
    requests (not s3fs, or a set-up ``SignedGet`` cannot stand in for)."""
    if id(fs) not in _SIGNED:
        try:
            _SIGNED[id(fs)] = signed = await SignedGet.for_fs(fs)
            if signed is not None:  # the sockets of a task's read and its read-ahead together, within the files allowed
                signed.pool = min(signed.pool, most_in_flight())
        except Exception:  # whatever the client's set-up lacks, s3fs reads as it always has
            _SIGNED[id(fs)] = None
    signed = _SIGNED[id(fs)]
    return signed if signed is not None and signed.declined < DECLINED_AFTER else None


async def _whole_object_reader(fs) -> Callable[[str], Awaitable[bytes]]:
    """How to read one whole object: a signed GET without botocore on s3fs (``signed_get``),
    falling back to s3fs for what it declines; the filesystem's own ``_cat_file`` elsewhere."""
    # s3fs asks for an object's size (a HEAD: another round trip) before each GET, to split large
    # objects into ranges; small ones are read whole in one GET
    options = {"max_concurrency": 1} if "max_concurrency" in inspect.signature(fs._cat_file).parameters else {}
    signed = await signed_for(fs)
    creds = await signed.credentials() if signed is not None else None

    async def read(path: str) -> bytes:
        if signed is not None and signed.declined < DECLINED_AFTER:
            try:
                return await signed.get(path, creds)
            except DeclinedError:
                signed.declined += 1
        return await fs._cat_file(path, **options)

    return read


def _threaded(fs, paths: list[str], in_flight: InFlight) -> list:
    """A quick store (a local disk's page cache answers in about 10 us) is read in this thread:
    a pool of threads would cost ten times the CPU in switches and GIL hand-overs, taken from the
    model on the same cores. A slow one (a network mount) gets a pool once requests are seen to
    take ``SEQUENTIAL_BELOW_S`` or more."""
    read = _read_local if isinstance(fs, LocalFileSystem) else fs.cat_file

    def one(path: str):
        return _call_timed(functools.partial(read, path), in_flight)

    out: list = []
    while len(out) < len(paths) and (in_flight.seen < _PROBED or in_flight.latency_s < SEQUENTIAL_BELOW_S):
        out.append(one(paths[len(out)]))
    rest = paths[len(out):]
    if not rest:
        return out
    workers = in_flight.limit(len(rest))
    in_flight.peak = max(in_flight.peak, workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="batchml-fetch") as pool:
        return out + list(pool.map(one, rest))


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:  # fsspec's cat_file costs twice as much CPU for the same bytes
        return f.read()


def _call_timed(call: Callable[[], bytes], in_flight: InFlight):
    started = time.perf_counter()
    try:
        data = call()
    except Exception as exc:
        return exc
    in_flight.observe(time.perf_counter() - started, len(data))
    return data
