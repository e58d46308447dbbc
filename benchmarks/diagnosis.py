"""Diagnosis: do the alerts say what broke and where, on nightly sequences of real CIFAR-10 images?

    python benchmarks/diagnosis.py [--root benchmarks/out/diagnosis] [--epochs 8] [--sizes 500,2000,20000]

Trains the fast net on half of the 50,000 training images (its other half and the 10,000 test
images, flipped and cropped a few pixels for their second and third use, are the nights' fresh
images), and a nine-class net without cats for the near-novelty figure. Then runs nightly streams
through `batchml score --segment-by camera` and `batchml monitor`, exactly as a nightly job does:
each stream starts with clean nights, then fault nights each followed by two clean nights. A night
has five cameras; a fault hits the whole night or one camera. Faults (benchmarks/faults.py):
pixel faults (blur, noise, contrast, exposure, fog, pixelate, colour cast, swapped or dead
channel, turned or upside-down camera, occlusion, vignetting), encoding faults (grey JPEGs, heavy
compression, 16x16 or 96x96 images), a replayed night, a partly duplicated one, near copies,
generated images of no CIFAR-10 class, labels of two classes changed on labelled nights, and a
class-mix change. Prints per fault and size whether it alerted, whether the first-ranked cause is
the injected one, whether the broken camera was named, and the label-free error; then novelty
AUROC (far: the test images against generated ones; near: cats against the nine classes a model
without cats knows) and the scoring overhead of the new statistics (same run, alternating).
The last line is one JSON object with the issue's keys.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from faults import ENCODING_FAULTS, PIXEL_FAULTS, Fault, decode, encode, fault_list, generated_images

from batchml import layout
from batchml.cluster import ClusterConfig, connect
from batchml.data.ingest import write_dataset
from batchml.data.sources import Source, SourceImage
from batchml.errors import BatchmlError
from batchml.monitoring import MonitorConfig, monitor_run
from batchml.registry import promote, read_card, resolve
from batchml.score.scoring import ScoreConfig, score
from batchml.store import Store, StoreConfig
from batchml.train.config import TrainConfig
from batchml.train.training import train

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CAMERAS = [f"cam-{i:02d}" for i in range(5)]
HELD_OUT = "cat"  # the class the nine-class model never sees


# -- the images ----------------------------------------------------------------------------------------


@dataclass
class Pool:
    """The archive's images: the training half the models learn from, and the fresh ones nights use."""

    train_ids: list[str] = field(default_factory=list)
    train_blobs: list[bytes] = field(default_factory=list)
    train_labels: list[int] = field(default_factory=list)
    fresh_blobs: list[bytes] = field(default_factory=list)
    fresh_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    test_blobs: list[bytes] = field(default_factory=list)
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


def read_archive() -> Pool:
    pool, fresh, fresh_labels, test, test_labels = Pool(), [], [], [], []
    with tarfile.open(ARCHIVE) as tar:
        for m in tar:
            if not m.isfile():
                continue
            split, cls, _ = m.name.split("/")[-3:]
            data, label = tar.extractfile(m).read(), CLASSES.index(cls)
            if split == "test":
                test.append(data)
                test_labels.append(label)
            elif int(hashlib.blake2b(m.name.encode(), digest_size=2).hexdigest(), 16) % 2:  # half of train
                pool.train_ids.append(m.name)
                pool.train_blobs.append(data)
                pool.train_labels.append(label)
            else:
                fresh.append(data)
                fresh_labels.append(label)
    pool.fresh_blobs, pool.fresh_labels = fresh + test, np.array(fresh_labels + test_labels)
    pool.test_blobs, pool.test_labels = test, np.array(test_labels)
    return pool


def write_images(store: Store, name: str, ids, blobs, labels, classes, extra: dict | None = None) -> str:
    """A dataset of these images (written once: an existing one of the name is kept)."""
    if store.exists(layout.dataset_path(name, layout.DATASET_MANIFEST)):
        return name
    images = (SourceImage(i, b, None if lab is None else int(lab), {k: v[n] for k, v in (extra or {}).items()})
              for n, (i, b, lab) in enumerate(zip(ids, blobs, labels, strict=True)))
    write_dataset(store, Source(name, classes, images, len(blobs)), name, "test", 2000, verbose=False)
    return name


def prepare(store: Store, pool: Pool, epochs: int, client) -> tuple[str, str]:
    """The production model (ten classes) and the nine-class one, trained once and kept."""
    out = []
    for name, keep in (("cifar10", None), ("ninecls", HELD_OUT)):
        try:
            out.append(str(resolve(store, f"{name}/production")))
            continue
        except BatchmlError:
            pass
        classes = [c for c in CLASSES if c != keep]
        rows = [(i, b, classes.index(CLASSES[lab])) for i, b, lab in zip(pool.train_ids, pool.train_blobs,
                                                                          pool.train_labels, strict=True)
                if CLASSES[lab] != keep]
        test = [(b, classes.index(CLASSES[lab])) for b, lab in zip(pool.test_blobs, pool.test_labels, strict=True)
                if CLASSES[lab] != keep]
        train_set = write_images(store, f"{name}-train", [r[0] for r in rows], [r[1] for r in rows],
                                 [r[2] for r in rows], classes)
        test_set = write_images(store, f"{name}-test", [f"t{i}" for i in range(len(test))], [t[0] for t in test],
                                [t[1] for t in test], classes)
        started = time.perf_counter()
        mv, card = train(client, store, TrainConfig(train_set, test_set, name=name, arch="fast", epochs=epochs))
        promote(store, mv)
        print(f"trained {mv} on {len(rows):,} images in {time.perf_counter() - started:.0f}s: test accuracy "
              f"{card.test_accuracy:.4f}, novelty reference {'kept' if card.novelty else 'MISSING'}", flush=True)
        out.append(str(mv))
    return out[0], out[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="benchmarks/out/diagnosis")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--prepare-only", action="store_true", help="train the two models and stop")
    args = parser.parse_args()
    store = Store(StoreConfig(args.root))
    pool = read_archive()
    with connect(ClusterConfig()) as client:
        production, nine = prepare(store, pool, args.epochs, client)
        if args.prepare_only:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
