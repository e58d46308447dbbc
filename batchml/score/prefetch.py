"""The next partition's bytes read on a worker while the current one is decoded and predicted.

The client tells each task which partition its worker is likely to score next (the one a
thread-count further on in submission order: Dask hands queued tasks out in that order). The
task starts reading it in the background once its own input is in memory; the next task
takes it, or reads for itself when it is not there (a hint that missed). A read ahead that
failed after all its attempts (``inputs.READ_ATTEMPTS``) fails the task with its error, as
the task's own read would have after as many. At most ``KEPT`` partitions wait in memory per worker.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from batchml.errors import BatchmlError

KEPT = 2  # partitions read ahead and kept per worker process; the oldest dropped first


class Prefetcher:
    """Partition tables being read ahead, by key; one background reader per process (each read
    keeps many requests in flight itself, ``batchml.data.fetch``)."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self.hits = self.misses = 0
        self._futures: OrderedDict[Hashable, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batchml-prefetch")

    def start(self, key: Hashable, read: Callable[[], pa.Table]) -> None:
        with self._lock:
            if key in self._futures:
                return
            self._futures[key] = self._pool.submit(read)
            while len(self._futures) > self.kept:
                self._futures.popitem(last=False)[1].cancel()

    def take(self, key: Hashable) -> pa.Table | None:
        """The table read ahead for ``key`` (waiting for a read under way), or None."""
        with self._lock:
            future = self._futures.pop(key, None)
        if future is None or future.cancelled():
            self.misses += 1
            return None
        try:
            table = future.result()
        except BatchmlError:  # what the read named after all its attempts: reading again would repeat them
            self.misses += 1
            raise
        except Exception:  # anything else: read again by the task, with the retries and the errors that name the file
            self.misses += 1
            return None
        self.hits += 1
        return table
