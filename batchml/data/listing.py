"""Every object under a prefix, streamed: a page (or a round of pages) at a time, each entry kept as
a small ``Listed`` tuple (name, size, kind), never the filesystem's whole info dicts.

A nightly feed is millions of small objects: s3fs's ``find`` would hold a dict of a dozen
fields for each, and the synthesised directories, before returning any. On S3 the listing
is ListObjectsV2, one page (up to 1,000 keys) per request: the top level with a delimiter,
then its folders without, several at once. Each page is retried like any other request, on
the signed-GET path (``signed_get``) and parsed by ElementTree (a twentieth of botocore's
CPU), botocore's where that path is not used. A local folder is listed with ``os.scandir`` (a
tenth of the cost of fsspec's ``walk``, which builds an info dict per file); elsewhere ``walk``,
one folder at a time.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import unquote_plus
from xml.etree import ElementTree

from fsspec.asyn import sync
from fsspec.implementations.local import LocalFileSystem

from batchml.data.fetch import signed_for
from batchml.data.signed_get import DeclinedError

LIST_PAGE = 1000  # keys per ListObjectsV2 page: S3's maximum
FOLDERS_AT_ONCE = 16  # folders of a prefix listed at once on S3 (a page of each in flight)
FOLDER_GROUPS = 4 * FOLDERS_AT_ONCE  # at most as many listings of a prefix's folders: near a flat listing's requests


class Listed(NamedTuple):
    name: str  # relative to the prefix, '/'-separated
    size: int | None
    kind: str  # 'file', or what else the filesystem says ('other' for a FIFO, a socket...)


def iter_listing(fs, root: str) -> Iterator[Listed]:
    """The objects under ``root`` (a path without protocol), in no promised order (on S3 a
    folder's pages come interleaved with others'); nothing when it does not exist."""
    if _is_s3(fs):
        yield from _s3_pages(fs, root)
        return
    if isinstance(fs, LocalFileSystem):
        yield from _local(root.rstrip("/") or "/", "")
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


def _local(folder: str, rel: str) -> Iterator[Listed]:
    """A local folder's files, folder by folder, as ``walk`` lists them: a link to a file is the
    file, a link to a folder is not followed (a loop would never end)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    except PermissionError:
        if not rel:  # the folder asked for: its own error
            raise
        # a folder below it this user cannot read (a disk's lost+found): named among what is not scored,
        # as a link to a folder is, not the end of the whole listing (``walk`` left it out)
        yield Listed(rel.rstrip("/"), None, "other")
        return
    subfolders = []
    for entry in entries:
        name = f"{rel}{entry.name}"
        try:
            info = entry.stat()  # the link's target, as a read would see it
        except OSError:  # a link to nothing: listed, and named when it is read
            yield Listed(name, None, "other")
            continue
        if stat.S_ISDIR(info.st_mode) and not entry.is_symlink():
            subfolders.append((entry.path, f"{name}/"))
        else:
            yield Listed(name, info.st_size, "file" if stat.S_ISREG(info.st_mode) else "other")
    for path, sub in subfolders:
        yield from _local(path, sub)


def _is_s3(fs) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) and hasattr(fs, "_call_s3")


def _s3_pages(fs, root: str) -> Iterator[Listed]:
    """The objects under ``root``: the top level first (with a delimiter: its objects, and its
    folders), then the folders (in at most ``FOLDER_GROUPS`` listings, ``_groups``),
    ``FOLDERS_AT_ONCE`` listings at a time, a page of each per round.
    A listing is one page after another, each waiting on the last's continuation token: a feed in
    class or camera folders is listed that many times faster (50 ms a page is 50 s for a million
    objects one page at a time)."""
    bucket, _, key = root.strip("/").partition("/")
    prefix = f"{key}/" if key else ""
    base = {"Bucket": bucket, "MaxKeys": LIST_PAGE, **getattr(fs, "req_kw", {})}
    folders: list[str] = []
    top = {**base, "Prefix": prefix, "Delimiter": "/"}
    while top is not None:
        page = sync(fs.loop, _page, fs, top)
        if page is None:  # no such bucket
            return
        yield from _objects(page, prefix)
        folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        top = _next(top, page)
    groups = deque(_groups(base, prefix, sorted(folders)))  # S3's order: by code point
    listing: list[tuple[dict, tuple[str, str] | None]] = []  # (its next request, the keys it holds)
    while listing or groups:
        while groups and len(listing) < FOLDERS_AT_ONCE:
            listing.append(groups.popleft())
        pages = sync(fs.loop, _pages, fs, [kwargs for kwargs, _ in listing])
        for (_, keys), page in zip(listing, pages, strict=True):
            yield from _objects(page, prefix, keys) if page is not None else ()
        listing = [(more, keys) for (kwargs, keys), page in zip(listing, pages, strict=True)
                   if page is not None and (more := _next(kwargs, page, keys)) is not None]


def _groups(base: dict, prefix: str, folders: list[str]) -> Iterator[tuple[dict, tuple[str, str] | None]]:
    """The top level's folders (in the store's order) as at most ``FOLDER_GROUPS`` listings: a folder
    alone is its own prefix; a run of neighbours is one listing of the keys from its first folder to
    past its last (``StartAfter``, then up to the bound), so a feed in a folder per image costs about
    the requests of one listing, not one (or more) per folder. The bound's keys: (first folder, end)."""
    size = max(1, -(-len(folders) // FOLDER_GROUPS))
    for i in range(0, len(folders), size):
        group = folders[i:i + size]
        if len(group) == 1:
            yield {**base, "Prefix": group[0]}, None
            continue
        # after the folder before (every key under it sorts before its name with '/' raised to '0'); the
        # top-level objects between are left out below, as are any keys past the last folder's
        after = folders[i - 1][:-1] + "0" if i else group[0][:-1]
        yield {**base, "Prefix": prefix, "StartAfter": after}, (group[0], group[-1][:-1] + "0")


def _objects(page: dict, prefix: str, keys: tuple[str, str] | None = None) -> Iterator[Listed]:
    for obj in page.get("Contents", []):
        if keys is not None and not keys[0] <= obj["Key"] < keys[1]:
            continue
        name = obj["Key"][len(prefix):]
        if keys is not None and "/" not in name:  # a top-level object, listed with the top level
            continue
        if name and not name.endswith("/"):  # a folder marker is not an object of the feed
            yield Listed(name, obj.get("Size"), "file")


def _next(kwargs: dict, page: dict, keys: tuple[str, str] | None = None) -> dict | None:
    """The request for the listing's next page, or None after its last (or past its keys' bound)."""
    if not page.get("IsTruncated"):
        return None
    if keys is not None and page.get("Contents") and page["Contents"][-1]["Key"] >= keys[1]:
        return None
    return {**kwargs, "ContinuationToken": page["NextContinuationToken"]}


async def _pages(fs, listing: list[dict]) -> list[dict | None]:
    return list(await asyncio.gather(*(_page(fs, kwargs) for kwargs in listing)))


async def _page(fs, kwargs: dict) -> dict | None:
    """One page: by the signed GET, else by botocore (``_call_s3``, its retries and errors); None
    where the bucket does not exist."""
    page = await _signed_page(fs, kwargs)
    if page is not None:
        return page
    try:
        return await fs._call_s3("list_objects_v2", **kwargs)
    except FileNotFoundError:
        return None


_QUERY = {"Prefix": "prefix", "MaxKeys": "max-keys", "ContinuationToken": "continuation-token",
          "Delimiter": "delimiter", "StartAfter": "start-after"}  # list_objects_v2's arguments, as query names


async def _signed_page(fs, kwargs: dict) -> dict | None:
    """One ListObjectsV2 page on the signed-GET path (``signed_get``), parsed by ElementTree: botocore
    spends about 0.1 s of CPU parsing a page of 1,000 keys, two minutes on a feed of a million. None
    where that path is not used: s3fs's ``_call_s3`` then asks, and raises its own errors."""
    signed = await signed_for(fs)
    if signed is None:
        return None
    # keys as URL-encoded text (as botocore asks): XML 1.0 cannot carry some characters a key may hold
    query = {"list-type": "2", "encoding-type": "url",
             **{name: str(kwargs[arg]) for arg, name in _QUERY.items() if arg in kwargs}}
    import aiohttp

    try:
        body = await signed.get(kwargs["Bucket"], await signed.credentials(), query)
        return _parsed_page(body)
    except (DeclinedError, ElementTree.ParseError, KeyError, ValueError):
        signed.declined += 1
        return None
    except (aiohttp.ClientError, OSError):
        # still failing after the signed path's few quick attempts (S3 throttling: 503 SlowDown for
        # seconds): s3fs asks, with botocore's retries and its own, which outlast such a burst; a
        # listing has no other retries around it
        return None


def _parsed_page(body: bytes) -> dict:
    """A ListBucketResult as botocore's parse has it: Contents (Key, Size), IsTruncated, NextContinuationToken."""
    root = ElementTree.fromstring(body)
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != f"{ns}ListBucketResult":  # an <Error> or another page answered 200: not an empty listing
        raise ValueError(f"not a ListBucketResult: <{root.tag[:80]}>")
    decode = unquote_plus if root.findtext(f"{ns}EncodingType") == "url" else str
    try:
        contents = [{"Key": decode(item.findtext(f"{ns}Key")), "Size": int(item.findtext(f"{ns}Size"))}
                    for item in root.iterfind(f"{ns}Contents")]
    except (TypeError, AttributeError) as exc:  # no <Key> or no <Size>: botocore's to make sense of
        raise ValueError(f"a listing entry without its key or size ({exc})") from exc
    folders = [{"Prefix": decode(item.findtext(f"{ns}Prefix") or "")} for item in root.iterfind(f"{ns}CommonPrefixes")]
    page = {"Contents": contents, "CommonPrefixes": [f for f in folders if f["Prefix"]],
            "IsTruncated": root.findtext(f"{ns}IsTruncated") == "true"}
    if page["IsTruncated"]:
        page["NextContinuationToken"] = root.findtext(f"{ns}NextContinuationToken")
        if not page["NextContinuationToken"]:
            raise ValueError("a truncated listing without a continuation token")
    return page
