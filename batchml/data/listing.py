"""Every object under a prefix, streamed: one page of a listing at a time, each entry kept as
a small ``Listed`` tuple (name, size, kind), never the filesystem's whole info dicts.

A nightly feed is millions of small objects: s3fs's ``find`` would hold a dict of a dozen
fields for each, and the synthesised directories, before returning any. On S3 the listing
is ListObjectsV2 without a delimiter, one page (up to 1,000 keys) per request, each page
retried like any other request; elsewhere ``walk``, one folder at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from fsspec.asyn import sync

LIST_PAGE = 1000  # keys per ListObjectsV2 page: S3's maximum


class Listed(NamedTuple):
    name: str  # relative to the prefix, '/'-separated
    size: int | None
    kind: str  # 'file', or what else the filesystem says ('other' for a FIFO, a socket...)


def iter_listing(fs, root: str) -> Iterator[Listed]:
    """The objects under ``root`` (a path without protocol), in the store's order; nothing
    when it does not exist."""
    if _is_s3(fs):
        yield from _s3_pages(fs, root)
        return
    try:
        walked = fs.walk(root, detail=True)
        for folder, _, files in walked:
            base = folder.rstrip("/")
            for name, info in files.items():
                rel = f"{base}/{name}".removeprefix(root.rstrip("/") + "/")
                yield Listed(rel, info.get("size"), info.get("type", "file"))
    except FileNotFoundError:
        return


def _is_s3(fs) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) and hasattr(fs, "_call_s3")


def _s3_pages(fs, root: str) -> Iterator[Listed]:
    bucket, _, key = root.strip("/").partition("/")
    prefix = f"{key}/" if key else ""
    kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE, **getattr(fs, "req_kw", {})}
    while True:
        try:
            page = sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs)
        except FileNotFoundError:  # no such bucket
            return
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix):]
            if name and not name.endswith("/"):  # a folder marker is not an object of the feed
                yield Listed(name, obj.get("Size"), "file")
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
