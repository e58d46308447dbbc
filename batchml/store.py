"""Everything that persists lives under one root URL: a local folder or ``s3://bucket/prefix``.

Writes are atomic: an object appears whole or not at all. On a local disk that is a
write to a temporary name and an ``os.replace``; on S3 a single PUT (or a completed
multipart upload) is already atomic. Readers therefore never see a torn file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from batchml.errors import BatchmlError

DEFAULT_ROOT = "batchml-store"
# Unattended jobs must fail, not hang, when object storage is down: bounded connect and
# read timeouts and a few retries, unless the options say otherwise. Listings are never
# cached: other processes (the workers) write into the same prefixes all the time.
# The connection pool holds as many connections as a worker keeps requests in flight
# (botocore's default of 10 would cap reads near 10 / latency objects per second).
S3_DEFAULTS = {"use_listings_cache": False,
               "config_kwargs": {"connect_timeout": 10, "read_timeout": 60, "max_pool_connections": 512,
                                 "retries": {"max_attempts": 4, "mode": "standard"}}}
try:  # s3fs raises botocore's own errors when the endpoint cannot be reached
    from botocore.exceptions import BotoCoreError, ClientError

    # what an unreachable or refusing object store raises
    REMOTE_ERRORS: tuple[type[Exception], ...] = (OSError, BotoCoreError, ClientError)
except ImportError:
    REMOTE_ERRORS = (OSError,)
_TMP_PREFIX = ".tmp-"
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def s3_options(given: dict[str, Any]) -> dict[str, Any]:
    """``S3_DEFAULTS`` under the given options; ``config_kwargs`` merged key by key, so that
    setting one (``retries``) keeps the others (the timeouts, the connection pool)."""
    config = {**S3_DEFAULTS["config_kwargs"], **given.get("config_kwargs", {})}
    return {**S3_DEFAULTS, **given, "config_kwargs": config}


def options_for(url: str, store: Store) -> dict[str, Any]:
    """The storage options for a URL beside the store: the store's own where it is the same kind of
    storage (the same endpoint and keys), or where the store is a local folder (which takes none: the
    options given can only be meant for the URL); none otherwise."""
    same = url.split("://")[0] == store.config.root.split("://")[0] if "://" in url else store.is_local
    return store.config.storage_options if same or store.is_local else {}


@dataclass(frozen=True)
class StoreConfig:
    """Where the store lives: a root URL and fsspec storage options (endpoint, keys...)."""

    root: str = DEFAULT_ROOT
    storage_options: dict[str, Any] = field(default_factory=dict)

    def cache_key(self) -> str:
        """A hashable identity, for per-process caches keyed by store."""
        return self.root + "|" + json.dumps(self.storage_options, sort_keys=True, default=str)


def absolute(url: str) -> str:
    """A local path made absolute (``~`` expanded); a URL as given. Tasks run in workers whose working
    directory is not the client's: a relative --root or --images would be another folder there."""
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


class Store:
    """Atomic reads and writes of bytes, JSON and Parquet under the root, by relative path."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        options = config.storage_options
        if config.root.startswith(("s3://", "s3a://")):
            options = s3_options(options)
        try:
            self.fs, self._root = fsspec.core.url_to_fs(config.root, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise BatchmlError(
                f"cannot open store {config.root!r}: {exc}. Use a local folder or "
                "s3://bucket/prefix, with storage options as a JSON object."
            ) from exc
        self._root = self._root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.config.root!r})"

    def path(self, rel: str) -> str:
        """The filesystem path of a relative name (no protocol)."""
        return f"{self._root}/{rel}" if rel else self._root

    def url(self, rel: str = "") -> str:
        """A full URL users can paste into pandas, DuckDB or the CLI."""
        path = self.path(rel)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # -- reading -------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return self._call(self.fs.exists, rel)

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self._call(self.fs.cat_file, rel)
        except FileNotFoundError as exc:
            raise BatchmlError(f"{self.url(rel)} does not exist") from exc

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(rel)), columns=columns)

    def list(self, prefix: str, suffix: str = "") -> list[str]:
        """Sorted base names directly under ``prefix`` ending in ``suffix``; [] if absent."""
        return sorted(self._entries(prefix, suffix))

    def list_versions(self, prefix: str, suffix: str = "") -> dict[str, str]:
        """The files of ``list`` with a version tag each (size and modification time or ETag),
        so that readers can cache objects and re-read only those that changed."""
        return {name: f"{e.get('size')}:{e.get('mtime') or e.get('LastModified') or e.get('ETag')}"
                for name, e in self._entries(prefix, suffix).items() if e.get("type") != "directory"}

    def _entries(self, prefix: str, suffix: str) -> dict[str, dict]:
        """Base name -> listing entry directly under ``prefix``, temporary files left out."""
        self.fs.invalidate_cache(self.path(prefix))  # another process may have written since we looked
        try:
            entries = self._call(self.fs.ls, prefix, detail=True)
        except FileNotFoundError:
            return {}
        named = ((e["name"].rstrip("/").rsplit("/", 1)[-1], e) for e in entries)
        return {n: e for n, e in named if n.endswith(suffix) and not n.startswith(_TMP_PREFIX)}

    # -- writing -------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` so that readers see the old object, or the new one whole."""
        path = self.path(rel)
        if not self.is_local:
            self._write_call(self.fs.pipe_file, rel, data)
            return
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{_TMP_PREFIX}{uuid.uuid4().hex}-{name}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def create(self, rel: str, data: bytes) -> bool:
        """Write ``data`` at ``rel`` only if nothing is there yet; True if this call created it.

        Atomic among concurrent writers (two processes never both get True): ``O_EXCL`` on a
        local disk, a conditional PUT (``If-None-Match: *``) on S3.
        """
        path = self.path(rel)
        if not self.is_local:
            try:
                self._write_call(self.fs.pipe_file, rel, data, IfNoneMatch="*")
            except BatchmlError as exc:
                if _precondition_failed(exc):
                    return False
                raise
            return True
        # written whole under a temporary name, then linked into place (a link fails where the name
        # exists): a write cut short (a full disk, a kill) leaves no empty or torn record under the name
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{_TMP_PREFIX}{uuid.uuid4().hex}-{name}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:  # a full disk, a lost mount: not written, said so
                    raise
                # a filesystem without hard links: the exclusive open, as before
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            return True
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def create_or_same(self, rel: str, data: bytes) -> bool:
        """``create``, or True where ``rel`` already holds exactly ``data``: on S3 a create whose answer
        was lost is retried and refused as a duplicate of itself (the data carries a unique token)."""
        if self.create(rel, data):
            return True
        try:
            return self.read_bytes(rel) == data
        except BatchmlError:  # gone again, or unreadable: not ours
            return False

    def sweep_temporary(self, prefix: str) -> int:
        """Remove the temporary files a writer killed mid-write left under ``prefix`` (local stores:
        an S3 PUT leaves none); the number removed. Call it only when no writer there is alive."""
        if not self.is_local:
            return 0
        removed = 0
        for folder, _, files in os.walk(self.path(prefix)):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))
                        removed += 1
        return removed

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n")

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(rel, buf.getvalue())

    def delete(self, rel: str, recursive: bool = False) -> None:
        """Remove an object (or a prefix, with ``recursive``); absent already is fine."""
        with contextlib.suppress(FileNotFoundError):
            self._call(self.fs.rm, rel, recursive=recursive)

    # -- errors --------------------------------------------------------------

    def _call(self, method, rel: str, *args, **kwargs):
        """Run one filesystem call, turning an unreachable store into a clear error."""
        try:
            return method(self.path(rel), *args, **kwargs)
        except (FileNotFoundError, BatchmlError):
            raise
        except PermissionError as exc:
            raise BatchmlError(
                f"access denied to {self.url(rel)}: check the credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --storage-options)"
            ) from exc
        except REMOTE_ERRORS as exc:
            raise BatchmlError(
                f"store {self.config.root!r} failed on {rel or '/'}: {exc}. "
                "Check that the endpoint is up and the bucket exists."
            ) from exc

    def _write_call(self, method, rel: str, *args, **kwargs):
        """``_call`` for a write: a write that finds nothing there has no bucket to write to."""
        try:
            return self._call(method, rel, *args, **kwargs)
        except FileNotFoundError as exc:
            raise BatchmlError(f"cannot write {self.url(rel)}: {exc}. Create the bucket, or check the store "
                               "root (--root) and the endpoint (--storage-options)") from exc



def _precondition_failed(exc: BaseException) -> bool:
    """True when S3 refused a conditional write because the object exists (HTTP 412)."""
    while exc is not None:
        if "PreconditionFailed" in str(exc) or "412" in str(getattr(exc, "response", {}).get("Error", {})):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
