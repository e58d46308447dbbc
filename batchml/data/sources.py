"""Where labelled images come from: class folders (plain or in a tar), the official
CIFAR-10 python batches, or Keras's own CIFAR-10 download.

Every source yields ``SourceImage`` records in a deterministic order, with the class
names known up front so that label indices are stable across splits and reruns.
"""

from __future__ import annotations

import pickle
import posixpath
import sys
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from batchml.data.images import encode_png
from batchml.errors import BatchmlError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")  # the last three: Pillow decodes them
SPLITS = ("train", "test")
CIFAR10_ARCHIVE = "cifar10-jpeg.tar.gz"  # the JPEG archive of CIFAR-10, as this project keeps it
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_HELP = (
    "SOURCE may be a folder or .tar/.tar.gz of class folders (<split>/<class>/*.jpg|png), "
    "the official CIFAR-10 python batches (a folder or cifar-10-python.tar.gz), "
    "or the word 'cifar10' for Keras's own download"
)


@dataclass
class SourceImage:
    image_id: str  # unique within the source split
    data: bytes  # encoded JPEG/PNG, as received
    label: int | None  # index into the source's classes; None when unknown
    extra: dict = field(default_factory=dict)  # carried through to predictions


@dataclass
class Source:
    """An opened source: its class names, a description, and its images in order."""

    description: str
    classes: list[str]
    images: Iterator[SourceImage]
    total: int | None = None  # how many images, where known before reading them (for progress)


def find_source(folders: Iterable[Path]) -> str:
    """The CIFAR-10 archive in the first of ``folders`` that holds it, else Keras's download
    (the caller, not the library, decides where to look)."""
    for folder in folders:
        candidate = Path(folder) / CIFAR10_ARCHIVE
        if candidate.is_file():
            return str(candidate)
    return "cifar10"


def open_source(source: str, split: str, classes: list[str] | None = None) -> Source:
    """Open SOURCE for one split; raises BatchmlError naming the source and the fix."""
    if split not in SPLITS:
        raise BatchmlError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if source == "cifar10":
        return _keras_cifar10(split)
    path = Path(source)
    if not path.exists():
        raise BatchmlError(f"source {source!r} does not exist. {_HELP}.")
    if path.is_dir():
        batches = _find_cifar_batches_dir(path)
        if batches is not None:
            return _cifar_batches_from_dir(batches, split)
        return _class_folders(path, split, classes)
    if tarfile.is_tarfile(path):
        return _open_tar(path, split, classes)
    raise BatchmlError(f"source {source!r} is neither a folder nor a tar archive. {_HELP}.")


# -- class folders -------------------------------------------------------------


def _within_split(
    paths: list[tuple[str, ...]], split: str, where: str
) -> list[tuple[str, ...] | None]:
    """Each image path (parts relative to the source root) relative to ``split``, or None.

    A source with ``train/`` or ``test/`` folders is read one split at a time; a source
    without them is one split. What remains is ``(class, file)`` for a labelled image,
    ``(file,)`` for an unlabelled one; deeper paths are not images of this source.
    """
    if not any(p[0] in SPLITS for p in paths if len(p) > 1):
        return [p if len(p) <= 2 else None for p in paths]
    chosen = [p[1:] if p[0] == split and 1 < len(p) <= 3 else None for p in paths]
    if not any(chosen):
        found = sorted({p[0] for p in paths if p[0] in SPLITS})
        raise BatchmlError(
            f"{where} has no {split!r} split (found: {', '.join(found)}); pass --split "
            + " or --split ".join(found)
        )
    return chosen


def _classes_of(rel: list[tuple[str, ...]], given: list[str] | None, where: str) -> list[str]:
    if not rel:
        raise BatchmlError(f"no .jpg/.png images found in {where}. {_HELP}.")
    found = sorted({p[0] for p in rel if len(p) == 2})
    if given is None:
        # CIFAR-10's official order happens to be alphabetical, so sorted names match it.
        return found
    unknown = [c for c in found if c not in given]
    if unknown:
        raise BatchmlError(f"{where} has class folders {unknown} not in --classes {given}")
    return list(given)


def check_utf8(names: list[str], where: str) -> list[str]:
    """``names`` as given, or an error naming the first that is not valid UTF-8 (its bytes
    cannot become an image id in Parquet)."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise BatchmlError(f"file name {shown!r} in {where} is not valid UTF-8: rename it "
                               "(e.g. convmv -f latin1 -t utf8 --notest -r FOLDER) and run again") from None
    return names


def check_classes(classes: list[str]) -> list[str]:
    """``--classes`` must name each class once, in label order."""
    if any(not c.strip() for c in classes) or len(set(classes)) != len(classes):
        raise BatchmlError(f"--classes {','.join(classes)!r} has an empty or repeated name: give each class once, "
                           "comma-separated, in label order (e.g. --classes cat,dog,emu)")
    return classes


def split_files(names: list[str], split: str, classes: list[str] | None,
                where: str) -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
    """The image files of ``names`` (relative, '/'-separated) in ``split``, each with its path within the
    split (``(class, file)`` or ``(file,)``), and the class names: as for a local folder of class folders."""
    names = check_utf8([n for n in names if _is_image(n)], where)
    rel = _within_split([tuple(n.split("/")) for n in names], split, where)
    chosen = [(n, r) for n, r in zip(names, rel, strict=True) if r is not None]
    return chosen, _classes_of([r for _, r in chosen], classes, f"{where} (split {split})")


def image_record(parts: tuple[str, ...], split: str, data: bytes, classes: list[str]) -> SourceImage:
    """A source image from its path within the split: labelled by its class folder, if it has one."""
    return _record(parts, split, data, classes)


def _record(parts: tuple[str, ...], split: str, data: bytes, classes: list[str]) -> SourceImage:
    label = classes.index(parts[0]) if len(parts) == 2 else None
    return SourceImage(image_id="/".join((split, *parts)), data=data, label=label)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not PurePosixPath(name).name.startswith(".")


def _class_folders(root: Path, split: str, classes: list[str] | None) -> Source:
    named = sorted(p for p in root.rglob("*") if _is_image(p.name))
    files = [p for p in named if p.is_file()]
    if others := [str(p.relative_to(root)) for p in named if not p.is_file() and not p.is_dir()]:
        _say(f"ingest: {len(others)} image name(s) under {root} are not regular files (a link to nothing, a FIFO: "
             f"never opened): {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}: left out")
    check_utf8([str(f.relative_to(root)) for f in files], str(root))
    rel = _within_split([f.relative_to(root).parts for f in files], split, str(root))
    chosen = [(f, r) for f, r in zip(files, rel, strict=True) if r is not None]
    names = _classes_of([r for _, r in chosen], classes, f"{root} (split {split})")

    def images() -> Iterator[SourceImage]:
        for path, parts in chosen:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise BatchmlError(f"cannot read image {path}: {exc}") from exc
            yield _record(parts, split, data, names)

    return Source(f"class folders in {root} (split {split})", names, images(), len(chosen))


_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


def _read_tar(path: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    """The archive and its members, or a clear error when it is cut short or corrupt: a
    plain tar cut between two members reads as a shorter archive, so its end is checked."""
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by the image iterator
        members = tar.getmembers()
        ended = tar.fileobj.tell() - tar.offset >= tarfile.BLOCKSIZE  # the end-of-archive block was read
    except _TAR_ERRORS as exc:
        raise _broken_tar(path, f"{type(exc).__name__}: {exc}") from exc
    if not ended:
        raise _broken_tar(path, f"it stops after {len(members)} members without the end-of-archive marker")
    return tar, members


def _broken_tar(path: Path, why: str) -> BatchmlError:
    return BatchmlError(f"archive {path} is truncated or corrupt ({why}); nothing was committed. "
                        "Copy or download it again, then rerun the ingest.")


def _open_tar(path: Path, split: str, classes: list[str] | None) -> Source:
    tar, members = _read_tar(path)
    if any(m.name.rstrip("/").endswith("batches.meta") for m in members):
        return _cifar_batches_from_tar(tar, members, split, str(path))
    files = _tar_images(members, path)
    check_utf8([m.name for m, _ in files], str(path))
    rel = _within_split([PurePosixPath(m.name).parts for m, _ in files], split, str(path))
    chosen = [(data, r) for (_, data), r in zip(files, rel, strict=True) if r is not None]
    names = _classes_of([r for _, r in chosen], classes, f"{path} (split {split})")

    def images() -> Iterator[SourceImage]:
        with tar:
            for member, parts in chosen:  # archive order: one pass over the compressed stream
                try:
                    data = tar.extractfile(member).read()
                except _TAR_ERRORS as exc:
                    raise _broken_tar(path, f"{member.name}: {exc}") from exc
                yield _record(parts, split, data, names)

    return Source(f"{path} (split {split})", names, images(), len(chosen))


def _tar_images(members: list[tarfile.TarInfo], path: Path) -> list[tuple[tarfile.TarInfo, tarfile.TarInfo]]:
    """(member, the member holding its bytes) for the image members as ``tar -x`` would leave them:
    a hard or symbolic link reads as the file it points to; a path the archive holds twice (``tar -r``
    appends a newer copy) once, its last copy. What is left out or replaced is said on stderr:
    never a silent skip, never one image id twice."""
    final = {posixpath.normpath(m.name): m for m in members}  # what a path holds once all is extracted
    so_far: dict[str, tarfile.TarInfo] = {}  # and at each member: a hard link is to the copy before it
    last: dict[tuple[str, ...], tuple[tarfile.TarInfo, tarfile.TarInfo]] = {}
    replaced, dangling = [], []
    for m in members:
        so_far[posixpath.normpath(m.name)] = m
        if not (m.isfile() or m.islnk() or m.issym()) or not _is_image(m.name):
            continue
        if (data := _link_target(m, so_far if m.islnk() else final)) is None:
            dangling.append(m.name)
            continue
        key = PurePosixPath(m.name).parts
        if key in last:
            replaced.append(m.name)
        last[key] = (m, data)
    if replaced:
        _say(f"ingest: {len(replaced)} path(s) appear more than once in {path} ({', '.join(replaced[:3])}): "
             "the last copy of each is ingested, as tar -x would extract it")
    if dangling:
        _say(f"ingest: {len(dangling)} link(s) in {path} point to no file in the archive "
             f"({', '.join(dangling[:3])}): left out; archive the files themselves (tar --dereference)")
    return sorted(last.values(), key=lambda pair: pair[0].offset)  # archive order of the copies kept


def _link_target(m: tarfile.TarInfo, by_name: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo | None:
    """The regular member a link resolves to within the archive (``m`` itself if it is one); None if none."""
    for _ in range(16):  # a chain of links, or a loop
        if m.isfile():
            return m
        if not (m.islnk() or m.issym()):
            return None
        name = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(m.name), m.linkname)
        if (m := by_name.get(posixpath.normpath(name))) is None:
            return None
    return None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- official CIFAR-10 python batches --------------------------------------------------

_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_BATCH_SIZE = 10_000  # images in each official batch


class _ArrayUnpickler(pickle.Unpickler):
    """The official batches are pickles: allow numpy arrays and nothing executable."""

    _ALLOWED: frozenset = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    import io

    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise BatchmlError(f"{where} is not a CIFAR-10 python batch: {exc}") from exc


def _find_cifar_batches_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "batches.meta").is_file():
            return candidate
    return None


def _batch_images(batch: dict, name: str, split: str) -> Iterator[SourceImage]:
    pixels = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    filenames = batch.get(b"filenames") or [b""] * len(pixels)
    for i, (img, label, fname) in enumerate(zip(pixels, batch[b"labels"], filenames, strict=True)):
        yield SourceImage(
            image_id=f"{split}/{name}/{i:05d}",
            data=encode_png(img),  # raw pixels: PNG keeps them exactly
            label=int(label),
            extra={"filename": fname.decode() if isinstance(fname, bytes) else str(fname)},
        )


def _cifar_classes(meta: dict) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else n for n in meta[b"label_names"]]


def _cifar_batches_from_dir(folder: Path, split: str) -> Source:
    meta = _unpickle((folder / "batches.meta").read_bytes(), str(folder / "batches.meta"))
    missing = [b for b in _BATCHES[split] if not (folder / b).is_file()]
    if missing:
        raise BatchmlError(f"{folder} lacks CIFAR batches {missing} for split {split!r}")

    def images() -> Iterator[SourceImage]:
        for name in _BATCHES[split]:
            batch = _unpickle((folder / name).read_bytes(), str(folder / name))
            yield from _batch_images(batch, name, split)

    return Source(f"CIFAR-10 python batches in {folder} (split {split})", _cifar_classes(meta), images(),
                  CIFAR_BATCH_SIZE * len(_BATCHES[split]))


def _cifar_batches_from_tar(tar: tarfile.TarFile, members: list, split: str, where: str) -> Source:
    by_name = {PurePosixPath(m.name).name: m for m in members if m.isfile()}
    missing = [b for b in ["batches.meta", *_BATCHES[split]] if b not in by_name]
    if missing:
        raise BatchmlError(f"{where} lacks CIFAR batches {missing} for split {split!r}")

    def read(name: str) -> dict:
        return _unpickle(tar.extractfile(by_name[name]).read(), f"{where}:{name}")

    classes = _cifar_classes(read("batches.meta"))

    def images() -> Iterator[SourceImage]:
        with tar:
            for name in _BATCHES[split]:
                yield from _batch_images(read(name), name, split)

    return Source(f"CIFAR-10 python batches in {where} (split {split})", classes, images(),
                  CIFAR_BATCH_SIZE * len(_BATCHES[split]))


def _keras_cifar10(split: str) -> Source:
    try:
        from keras.datasets import cifar10

        (x_train, y_train), (x_test, y_test) = cifar10.load_data()
    except Exception as exc:
        raise BatchmlError(
            f"could not get CIFAR-10 through Keras's download ({type(exc).__name__}: {exc}). "
            "Without internet, pass the data instead: a folder or .tar.gz of class folders "
            f"(e.g. {CIFAR10_ARCHIVE}), or the official "
            "cifar-10-python.tar.gz (or its extracted folder)."
        ) from exc
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    batch = {b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": y.ravel().tolist()}
    return Source(
        f"Keras CIFAR-10 download (split {split})",
        list(CIFAR10_CLASSES),
        _batch_images(batch, "keras", split),
        len(x),
    )
