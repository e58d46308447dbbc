"""Diagnosis: do the alerts say what broke and where, on nightly sequences of real CIFAR-10 images?

    python benchmarks/diagnosis.py [--root benchmarks/out/diagnosis] [--epochs 8] [--sizes 500,2000,20000]

Trains the fast net on half of the 50,000 training images (its other half and the 10,000 test
images, flipped and cropped a few pixels for their second and third use, are the nights' fresh
images), and a nine-class net without cats for the near-novelty figure. Then runs nightly streams
through `batchml score --segment-by camera` and `batchml monitor`, exactly as a nightly job does:
each stream starts with clean nights, then fault nights each followed by clean nights (two at
500 images, one at 2,000 and 20,000). A night
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
from faults import ENCODING_FAULTS, PIXEL_FAULTS, QUALITY, Fault, decode, encode, fault_list, generated_images
from PIL import Image

from batchml import layout
from batchml.cluster import ClusterConfig, connect
from batchml.data.ingest import write_dataset
from batchml.data.sources import Source, SourceImage
from batchml.errors import BatchmlError
from batchml.monitoring import MonitorConfig, monitor_run
from batchml.registry import promote, resolve
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


# -- the nights ------------------------------------------------------------------------------------------


class FreshImages:
    """The fresh images in a fixed shuffled order, cycling; each pass through them changes the bytes
    (flipped, re-encoded) so that no night repeats a recent night's image unless a fault says so."""

    VARIANTS = 6

    def __init__(self, pool: Pool, seed: int) -> None:
        self.blobs, self.labels = pool.fresh_blobs, pool.fresh_labels
        self.order = np.random.default_rng(seed).permutation(len(self.blobs))
        self.used = 0

    def take(self, n: int) -> tuple[list[bytes], np.ndarray, list[str]]:
        picks = [(self.used + i) for i in range(n)]
        self.used += n
        sources = [int(self.order[p % len(self.order)]) for p in picks]
        variants = [(p // len(self.order)) % self.VARIANTS for p in picks]
        blobs = [_variant(self.blobs[s], v) for s, v in zip(sources, variants, strict=True)]
        return blobs, self.labels[sources], [f"f{s}-v{v}" for s, v in zip(sources, variants, strict=True)]

    def take_class_mix(self, n: int, boost_class: int, rng) -> tuple[list[bytes], np.ndarray, list[str]]:
        """``n`` images where one class is three times as common (drawn from the next fresh images)."""
        blobs, labels, ids = self.take(4 * n)
        weight = np.where(labels == boost_class, 3.0, 1.0)
        keep = rng.choice(len(blobs), n, replace=False, p=weight / weight.sum())
        return [blobs[i] for i in keep], labels[keep], [ids[i] for i in keep]


def _variant(blob: bytes, v: int) -> bytes:
    """The ``v``-th pass's copy of an image: mirrored on odd passes (as the model saw it in training),
    re-encoded with the pass in a JPEG comment, so that all six differ in bytes while the model sees
    the same pixels (re-encoding alone repeats the same bytes: a benchmark artefact read, rightly, as
    a replayed batch; any change to the pixels moves the outputs measurably over a week of nights)."""
    if v == 0:
        return blob
    pixels = decode([blob])[0]
    if v % 2:
        pixels = pixels[:, ::-1]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "JPEG", quality=QUALITY, comment=f"pass {v}")
    return buf.getvalue()


@dataclass
class Night:
    name: str
    size: int
    fault: Fault | None
    camera: str | None  # the broken camera; None: the whole night (or a clean night)
    labelled: bool


def build_night(night: Night, fresh: FreshImages, previous: tuple | None, rng) -> tuple:
    """The night's image ids, bytes, labels (None where unlabelled), cameras and true labels (-1:
    of no class), with the fault applied to the whole night or to one camera's rows."""
    blobs, truth, ids = fresh.take(night.size)
    cameras = np.array(CAMERAS)[rng.integers(0, len(CAMERAS), night.size)]
    hit = np.ones(night.size, bool) if night.camera is None else cameras == night.camera
    rows = np.flatnonzero(hit)
    name = night.fault.name if night.fault else None
    previous, previous_labels = previous or ([], [])
    if name in PIXEL_FAULTS:
        changed = encode(PIXEL_FAULTS[name](decode([blobs[i] for i in rows]), rng))
        for i, b in zip(rows, changed, strict=True):
            blobs[i] = b
    elif name in ENCODING_FAULTS:
        for i, b in zip(rows, ENCODING_FAULTS[name]([blobs[i] for i in rows], rng), strict=True):
            blobs[i] = b
    elif name == "replayed_batch":  # the rows come again from the previous night, same bytes
        for j, i in enumerate(rows):
            blobs[i] = previous[j % len(previous)]
            truth[i] = previous_labels[j % len(previous)]
    elif name in ("partly_duplicated", "near_duplicates"):
        copies = rows[rng.random(len(rows)) < 0.4]
        originals = rng.choice(np.setdiff1d(rows, copies), len(copies))
        for c, o in zip(copies, originals, strict=True):
            blobs[c] = blobs[o] if name == "partly_duplicated" else encode(decode([blobs[o]]), quality=92)[0]
            truth[c] = truth[o]
    elif name == "no_class_images":
        for i, b in zip(rows, generated_images(len(rows), rng), strict=True):
            blobs[i] = b
            truth[i] = -1
    elif name == "class_mix":
        mixed, labels, new_ids = fresh.take_class_mix(len(rows), int(rng.integers(0, 10)), rng)
        for j, i in enumerate(rows):
            blobs[i], truth[i], ids[i] = mixed[j], labels[j], new_ids[j]
    labels = truth.copy()
    if name == "labels_changed":  # part of two classes' labels change meaning: cats and dogs swapped
        cat, dog = CLASSES.index("cat"), CLASSES.index("dog")
        swap = hit & np.isin(truth, [cat, dog]) & (rng.random(night.size) < 0.4)
        labels[swap] = np.where(truth[swap] == cat, dog, cat)
    ids = [f"{night.name}-{i:05d}-{x}" for i, x in enumerate(ids)]
    return ids, blobs, labels, cameras, truth


def run_night(client, store: Store, model: str, night: Night, fresh: FreshImages, previous, rng,
              cfg: MonitorConfig) -> tuple[dict, tuple]:
    ids, blobs, labels, cameras, truth = build_night(night, fresh, previous, rng)
    given = [int(v) if night.labelled and v >= 0 else None for v in labels]
    write_images(store, night.name, ids, blobs, given, CLASSES, {"camera": list(cameras)})
    manifest = score(client, store, ScoreConfig(night.name, model, night.name, segment_by="camera"), verbose=False)
    report = monitor_run(store, night.name, cfg)
    predictions = pd.read_parquet(store.path(layout.run_path(night.name, "predictions")),
                                  columns=["image_id", "predicted"])
    # accuracy against the labels as given (a labelling change is what the labelled nights measure),
    # else against the truth (-1: an image of no class, never right)
    judged = pd.Series(labels if night.labelled else truth, index=ids).reindex(predictions.image_id).to_numpy()
    accuracy = float((predictions.predicted.to_numpy() == judged).mean())
    first = report.alerts[0] if report.alerts else None
    return {
        "night": night.name, "size": night.size, "fault": night.fault.name if night.fault else None,
        "expected_cause": night.fault.cause if night.fault else None,
        "accepted_causes": list(night.fault.causes) if night.fault else [], "camera": night.camera,
        "labelled": night.labelled, "kinds": [a.kind for a in report.alerts],
        "first_cause": first.cause if first else None, "first_segment": first.segment if first else None,
        "segments_named": sorted({a.segment for a in report.alerts if a.segment}),
        "accuracy": accuracy, "label_free": report.row.label_free_accuracy,
        "reference": report.row.reference_accuracy, "rows": manifest.rows,
        "first_message": first.message if first else None,
    }, (blobs, truth)


def streams(sizes: list[int], faults: list[Fault], large_faults: list[str]) -> list[list[Night]]:
    """The nightly sequences: clean nights first, then each fault followed by two clean nights."""
    out = []

    def stream(tag, size, plan, labelled=False, warmup=6, after=2):
        nights = [Night(f"{tag}-{i:03d}", size, None, None, labelled) for i in range(warmup)]
        for fault, camera in plan:
            for f in (fault, *[None] * after):
                nights.append(Night(f"{tag}-{len(nights):03d}", size, f, camera if f else None, labelled))
        out.append(nights)

    unlabelled = [f for f in faults if f.name != "labels_changed"]
    for size in sizes:
        modes = [None] if size < 1000 else [None, "cam-02"]
        if size > 10_000:
            plan = [(f, "cam-02") for f in unlabelled if f.name in large_faults]
            stream(f"s{size}", size, plan, warmup=3)
        else:
            stream(f"s{size}", size, [(f, m) for f in unlabelled for m in modes], after=2 if size < 1000 else 1)
    for label_fault in [f for f in faults if f.name == "labels_changed"]:
        stream("labelled", 2000, [(label_fault, m) for m in (None, "cam-02") for _ in range(5)], labelled=True)
    return out


# -- novelty and overhead ----------------------------------------------------------------------------


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside image scores above an inside one), ties half (the Mann-Whitney statistic)."""
    ranks = pd.Series(np.concatenate([inside, outside])).rank().to_numpy()
    n, m = len(inside), len(outside)
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))


def novelty_scores(client, store: Store, model: str, dataset: str) -> pd.DataFrame:
    run_id = f"novelty-{model.replace('/', '-')}-{dataset}"
    if not store.exists(layout.run_path(run_id, layout.RUN_MANIFEST)):
        score(client, store, ScoreConfig(dataset, model, run_id), verbose=False)
    return pd.read_parquet(store.path(layout.run_path(run_id, "predictions")), columns=["image_id", "novelty", "label"])


def novelty_figures(client, store: Store, pool: Pool, production: str, nine: str) -> dict:
    rng = np.random.default_rng(1)
    test = write_images(store, "novelty-test", [f"t{i}" for i in range(len(pool.test_blobs))], pool.test_blobs,
                        list(pool.test_labels), CLASSES)
    made = generated_images(2000, rng)
    far = write_images(store, "novelty-generated", [f"g{i}" for i in range(len(made))], made, [None] * len(made),
                       CLASSES)
    clean, foreign = (novelty_scores(client, store, production, d).novelty.to_numpy() for d in (test, far))
    # the nine-class model scores the test images unlabelled (its classes lack cat); cats are held out
    nine_classes = [c for c in CLASSES if c != HELD_OUT]
    unlabelled = write_images(store, "novelty-test-nine", [f"t{i}" for i in range(len(pool.test_blobs))],
                              pool.test_blobs, [None] * len(pool.test_blobs), nine_classes)
    near = novelty_scores(client, store, nine, unlabelled)
    held = pool.test_labels[near.image_id.str[1:].astype(int).to_numpy()] == CLASSES.index(HELD_OUT)
    return {"novelty_auroc_far": auroc(clean, foreign),
            "novelty_auroc_near": auroc(near.novelty.to_numpy()[~held], near.novelty.to_numpy()[held])}


def overhead(client, store: Store, model: str, rounds: int = 3) -> dict:
    """Score throughput without the new statistics over with them: the same 10,000 images, alternating."""
    rates = {True: [], False: []}
    for r in range(rounds):
        for diagnostics in (True, False):
            run_id = f"overhead-{r}-{'with' if diagnostics else 'without'}-{time.time_ns()}"
            m = score(client, store, ScoreConfig("novelty-test", model, run_id, diagnostics=diagnostics), verbose=False)
            rates[diagnostics].append(m.images_per_second)
    with_, without = float(np.median(rates[True])), float(np.median(rates[False]))
    print(f"scoring throughput: {without:,.0f} images/s without the new statistics, {with_:,.0f} with them "
          f"(medians of {rounds} alternating runs of 10,000)")
    return {"scoring_overhead": without / with_ - 1, "images_per_s_with": with_, "images_per_s_without": without}


# -- the figures ---------------------------------------------------------------------------------------


def summarise(nights: list[dict]) -> dict:
    faults = [n for n in nights if n["fault"]]
    clean = [n for n in nights if not n["fault"]]
    drops = [n for n in faults if n["accuracy"] <= n["reference"] - 0.05]
    cameras = [n for n in faults if n["camera"]]
    whole_label = [n for n in faults if n["fault"] == "labels_changed" and not n["camera"]]
    free = [n for n in faults if n["label_free"] is not None and not n["labelled"]]
    return {
        "fault_nights": len(faults), "alerted": sum(bool(n["kinds"]) for n in faults),
        # the first cause is one the fault allows (pixel faults: the properties or the novelty, both
        # saying the images changed); strict: the first of them
        "cause_named": sum(n["first_cause"] in n["accepted_causes"] for n in faults),
        "cause_named_strict": sum(n["first_cause"] == n["expected_cause"] for n in faults),
        "camera_fault_nights": len(cameras),
        "segment_named": sum(isinstance(n["first_segment"], str) and n["camera"] in n["first_segment"]
                             for n in cameras),
        "clean_nights": len(clean), "clean_false_alarms": sum(bool(n["kinds"]) for n in clean),
        "drop_nights": len(drops), "drop_nights_alerted": sum(bool(n["kinds"]) for n in drops),
        "class_drop_nights": len(whole_label),
        "class_drop_detected": sum("class_performance_drop" in n["kinds"] for n in whole_label),
        "label_free_mae_faults": float(np.mean([abs(n["label_free"] - n["accuracy"]) for n in free])) * 100,
    }


def report(nights: list[dict]) -> None:
    frame = pd.DataFrame([n for n in nights if n["fault"]])
    frame["alerted"] = frame.kinds.map(bool)
    frame["cause_ok"] = [c in ok for c, ok in zip(frame.first_cause, frame.accepted_causes, strict=True)]
    frame["where_ok"] = [isinstance(s, str) and c in s if isinstance(c, str) else None
                         for s, c in zip(frame.first_segment, frame.camera, strict=True)]
    print(frame.groupby(["fault", "size"])[["alerted", "cause_ok"]].mean().unstack().to_string())
    missed = frame[~frame.cause_ok]
    for _, n in missed.iterrows():
        print(f"  cause missed: {n.night} {n.fault} ({n.camera or 'whole night'}): first {n.first_cause}; "
              f"kinds {n.kinds}")
    clean = [n for n in nights if not n["fault"] and n["kinds"]]
    for n in clean:
        print(f"  false alarm: {n['night']} {n['kinds']}: {n['first_message']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="benchmarks/out/diagnosis")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--prepare-only", action="store_true", help="train the two models and stop")
    parser.add_argument("--sizes", default="500,2000,20000")
    parser.add_argument("--large-faults", default="blur,grayscale,upside_down,no_class_images,partly_duplicated,"
                        "class_mix")
    parser.add_argument("--only", help="comma-separated fault names (a quicker partial run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    store = Store(StoreConfig(args.root))
    pool, rng, cfg = read_archive(), np.random.default_rng(args.seed), MonitorConfig()
    faults = [f for f in fault_list() if not args.only or f.name in args.only.split(",")]
    started = time.perf_counter()
    with connect(ClusterConfig()) as client:
        production, nine = prepare(store, pool, args.epochs, client)
        if args.prepare_only:
            return 0
        figures = novelty_figures(client, store, pool, production, nine)
        print(f"novelty AUROC: far (test images against generated ones) {figures['novelty_auroc_far']:.3f}, "
              f"near (cats against the nine classes a model without cats knows) {figures['novelty_auroc_near']:.3f}")
        fresh, nights, previous = FreshImages(pool, args.seed), [], None
        stamp = time.strftime("%H%M%S")
        for stream in streams([int(x) for x in args.sizes.split(",")], faults, args.large_faults.split(",")):
            for night in stream:
                night.name = f"{night.name}-{stamp}"
                record, previous = run_night(client, store, production, night, fresh, previous, rng, cfg)
                nights.append(record)
                if record["fault"] or record["kinds"]:
                    print(f"{record['night']}: {record['fault'] or 'clean'} ({record['camera'] or 'whole'}), "
                          f"accuracy {record['accuracy']:.3f}, label-free {record['label_free'] or 0:.3f}: "
                          f"{record['kinds']} first {record['first_cause']} at {record['first_segment']}", flush=True)
        figures |= overhead(client, store, production)
    pd.DataFrame(nights).to_json(Path(args.root) / f"nights-{stamp}.json", orient="records")
    report(nights)
    figures = {**summarise(nights), **figures, "seconds": round(time.perf_counter() - started)}
    print(f"fault nights {figures['fault_nights']}: alerted {figures['alerted']}, first cause the injected one "
          f"{figures['cause_named']} ({figures['cause_named_strict']} its first choice); one camera broken: named "
          f"{figures['segment_named']} of "
          f"{figures['camera_fault_nights']}; clean nights {figures['clean_nights']}: false alarms "
          f"{figures['clean_false_alarms']}; nights 5+ points below the reference {figures['drop_nights']}: alerted "
          f"{figures['drop_nights_alerted']}; a class's labels changed (2,000 labelled rows): detected "
          f"{figures['class_drop_detected']} of {figures['class_drop_nights']}; label-free error on fault nights "
          f"{figures['label_free_mae_faults']:.2f} points; scoring overhead {figures['scoring_overhead']:.1%}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
