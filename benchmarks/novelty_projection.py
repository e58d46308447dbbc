"""Does the novelty bank on its principal axes (method knn-pca) flag what the exact bank flags, and
what does it save?

    python benchmarks/novelty_projection.py [--root benchmarks/out/throughput-store] [--repeats 5]

On the store's production model (the tutorial CNN after one epoch where the store has none), fits
three references from the features of 10,000 training images and the validation split
(``fit_novelty_on``'s): ``exact``, the reference before the projection (method knn: all 10,000,
512 dimensions, the 10th neighbour); ``projected``, the same bank on ``PROJECTED_DIM`` principal
axes; ``shipped``, what training fits now (knn-pca: ``TRAIN_SAMPLE`` of them, the
``K_NEIGHBOURS``-th neighbour). Then scores, with each, the 10,000 test images,
2,000 generated images of no CIFAR-10 class and 2,000 test images under each pixel fault of
``benchmarks/diagnosis.py`` (re-encoded as JPEG at the archive's quality), and prints per set the
share flagged (novelty above 1) by each and where each disagrees with ``exact``; the far AUROC
(test against generated) and each fault's AUROC against the clean test images; the Spearman
correlation of the shipped and exact scores; and the cost of the model with each novelty output
against the model alone, in this
process on one 2,000-image batch set (medians of ``--repeats``). The last line is one JSON object
of those figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from cifar_store import cifar10_store
from faults import PIXEL_FAULTS, decode, encode, generated_images

from batchml.backend import configure_backend
from batchml.data import datasets
from batchml.data.images import Preprocessing
from batchml.device import CPU_BATCH
from batchml.registry import load_model
from batchml.store import Store, StoreConfig
from batchml.train.novelty import (
    K_NEIGHBOURS,
    PROJECTED_DIM,
    TRAIN_SAMPLE,
    feature_model,
    fit_reference,
    novelty_model,
    predict_features,
)

FAULT_IMAGES = 2_000
EXACT_ROWS, EXACT_K = 10_000, 10  # the reference before the projection


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside image scores above an inside one), ties half (the Mann-Whitney statistic)."""
    ranks = pd.Series(np.concatenate([inside, outside])).rank().to_numpy()
    n, m = len(inside), len(outside)
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))


def median_ms(repeats: int, run) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).parent / "out" / "throughput-store"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    store = Store(StoreConfig(args.root))
    mv, test_rows, _ = cifar10_store(store)
    configure_backend()
    model = load_model(store, mv)
    fm = feature_model(model)
    rng = np.random.default_rng(0)

    x, _, ids, _ = datasets.load_labelled(store, "cifar10-train", Preprocessing())
    val = datasets.in_validation(ids, 0.1)
    train = np.flatnonzero(~val)
    train = np.sort(rng.choice(train, min(EXACT_ROWS, len(train)), replace=False))
    _, train_features = predict_features(fm, x[train])
    val_probs, val_features = predict_features(fm, x[val])
    del x
    sample = np.sort(rng.choice(len(train), min(TRAIN_SAMPLE, len(train)), replace=False))
    references = {
        "exact": fit_reference(train_features, val_features, val_probs, dimensions=None, neighbours=EXACT_K),
        "projected": fit_reference(train_features, val_features, val_probs, neighbours=EXACT_K),
        "shipped": fit_reference(train_features[sample], val_features, val_probs)}
    print(f"{mv}: thresholds on {int(val.sum()):,} validation images; exact: {len(train):,} training images, "
          f"{train_features.shape[1]} dimensions, neighbour {EXACT_K}; projected: the same on {PROJECTED_DIM} axes; "
          f"shipped: {len(sample):,} of them on {PROJECTED_DIM} axes, neighbour {K_NEIGHBOURS}")

    test = decode([row["image"] for row in test_rows])
    some = test[rng.choice(len(test), FAULT_IMAGES, replace=False)]
    sets = {"clean test": test, "generated": decode(generated_images(FAULT_IMAGES, rng))}
    sets |= {name: decode(encode(fault(some.copy(), rng))) for name, fault in PIXEL_FAULTS.items()}

    scores, rows = {}, []
    for name, pixels in sets.items():
        probs, features = predict_features(fm, pixels)
        scores[name] = {k: ref.score(features, probs) for k, ref in references.items()}
        flags = {k: v > 1.0 for k, v in scores[name].items()}
        rows.append({"set": name, "images": len(pixels), **{k: f.mean() for k, f in flags.items()},
                     **{f"disagree_{k}": (flags["exact"] != f).mean() for k, f in flags.items() if k != "exact"}})
    for name in sets:
        if name != "clean test":
            row = next(r for r in rows if r["set"] == name)
            for k in references:
                row[f"auroc_{k}"] = auroc(scores["clean test"][k], scores[name][k])
    table = pd.DataFrame(rows).set_index("set")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))

    both = {k: np.concatenate([s[k] for s in scores.values()]) for k in references}
    spearman = float(np.corrcoef(*(pd.Series(both[k]).rank().to_numpy() for k in ("exact", "shipped")))[0, 1])
    faults = table.drop(["clean test", "generated"])

    batch = test[:2000]

    def passes(scorer):
        return lambda: [scorer.predict_on_batch(batch[i: i + CPU_BATCH]) for i in range(0, len(batch), CPU_BATCH)]

    cost = {"model_ms": median_ms(args.repeats, passes(model))}
    for k, ref in references.items():
        cost[f"with_{k}_novelty_ms"] = median_ms(args.repeats, passes(novelty_model(model, ref)))
    added = {k: cost[f"with_{k}_novelty_ms"] - cost["model_ms"] for k in references}
    saved = 1 - added["shipped"] / added["exact"]
    figures = {"spearman_shipped_to_exact": round(spearman, 5), **cost, "novelty_cost_saved": round(saved, 3)}
    for k in references:
        figures |= {f"auroc_far_{k}": round(table.loc["generated", f"auroc_{k}"], 4),
                    f"clean_flagged_{k}": round(table.loc["clean test", k], 4),
                    f"fault_auroc_mean_{k}": round(faults[f"auroc_{k}"].mean(), 4)}
        if k != "exact":
            figures |= {f"largest_flagged_difference_{k}": round(float((table["exact"] - table[k]).abs().max()), 4),
                        f"largest_disagreement_{k}": round(float(table[f"disagree_{k}"].max()), 4)}
    for k in references:
        print(f"{k}: far AUROC {figures[f'auroc_far_{k}']:.4f}, mean fault AUROC {figures[f'fault_auroc_mean_{k}']:.4f}"
              + ("" if k == "exact" else f"; flagged shares within {figures[f'largest_flagged_difference_{k}']:.2%} "
                 f"of exact's in every set, disagreeing on at most {figures[f'largest_disagreement_{k}']:.2%} of "
                 "a set's images") + f"; the model with it: {cost[f'with_{k}_novelty_ms']:.0f} ms for 2,000 images")
    print(f"the model alone: {cost['model_ms']:.0f} ms; the shipped novelty costs {saved:.0%} less than the exact; "
          f"Spearman of shipped to exact scores {spearman:.5f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
