"""Does the novelty bank on its principal axes (method knn-pca) flag what the exact bank flags, and
what does it save?

    python benchmarks/novelty_projection.py [--root benchmarks/out/throughput-store] [--repeats 5]

On the store's production model (the tutorial CNN after one epoch where the store has none), fits
two references from the same features: 10,000 training images (the sample training takes) and
the validation split (``fit_novelty_on``'s), once exact (method knn: the 512-dimensional bank) and
once projected (knn-pca: ``PROJECTED_DIM`` axes). Then scores, with both, the 10,000 test images,
2,000 generated images of no CIFAR-10 class and 2,000 test images under each pixel fault of
``benchmarks/diagnosis.py`` (re-encoded as JPEG at the archive's quality), and prints per set the
share flagged (novelty above 1) by each and where they disagree; the far AUROC (test against
generated) and each fault's AUROC against the clean test images; the Spearman correlation of the
two scores; and the cost of the model with each novelty output against the model alone, in this
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
    PROJECTED_DIM,
    TRAIN_SAMPLE,
    feature_model,
    fit_reference,
    novelty_model,
    predict_features,
)

FAULT_IMAGES = 2_000


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

    x, y, ids, _ = datasets.load_labelled(store, "cifar10-train", Preprocessing())
    val = datasets.in_validation(ids, 0.1)
    train = np.flatnonzero(~val)
    train = np.sort(rng.choice(train, min(TRAIN_SAMPLE, len(train)), replace=False))
    _, train_features = predict_features(fm, x[train])
    val_probs, val_features = predict_features(fm, x[val])
    del x
    references = {"exact": fit_reference(train_features, val_features, val_probs, dimensions=None),
                  "projected": fit_reference(train_features, val_features, val_probs)}
    print(f"{mv}: bank of {len(train):,} training images, thresholds on {int(val.sum()):,} validation images; "
          f"exact 512 dimensions against {PROJECTED_DIM} principal axes")

    test = decode([row["image"] for row in test_rows])
    some = test[rng.choice(len(test), FAULT_IMAGES, replace=False)]
    sets = {"clean test": test, "generated": decode(generated_images(FAULT_IMAGES, rng))}
    sets |= {name: decode(encode(fault(some.copy(), rng))) for name, fault in PIXEL_FAULTS.items()}

    scores, rows = {}, []
    for name, pixels in sets.items():
        probs, features = predict_features(fm, pixels)
        scores[name] = {k: ref.score(features, probs) for k, ref in references.items()}
        flags = {k: v > 1.0 for k, v in scores[name].items()}
        rows.append({"set": name, "images": len(pixels), "exact": flags["exact"].mean(),
                     "projected": flags["projected"].mean(), "disagree": (flags["exact"] != flags["projected"]).mean()})
    for name in sets:
        if name != "clean test":
            row = next(r for r in rows if r["set"] == name)
            for k in references:
                row[f"auroc_{k}"] = auroc(scores["clean test"][k], scores[name][k])
    table = pd.DataFrame(rows).set_index("set")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))

    both = {k: np.concatenate([s[k] for s in scores.values()]) for k in references}
    spearman = float(np.corrcoef(*(pd.Series(v).rank().to_numpy() for v in both.values()))[0, 1])
    faults = table.drop(["clean test", "generated"])

    batch = test[:2000]

    def passes(scorer):
        return lambda: [scorer.predict_on_batch(batch[i: i + CPU_BATCH]) for i in range(0, len(batch), CPU_BATCH)]

    cost = {"model_ms": median_ms(args.repeats, passes(model))}
    for k, ref in references.items():
        cost[f"with_{k}_novelty_ms"] = median_ms(args.repeats, passes(novelty_model(model, ref)))
    saved = 1 - (cost["with_projected_novelty_ms"] - cost["model_ms"]) / (cost["with_exact_novelty_ms"] - cost["model_ms"])
    figures = {
        "auroc_far_exact": round(table.loc["generated", "auroc_exact"], 4),
        "auroc_far_projected": round(table.loc["generated", "auroc_projected"], 4),
        "clean_flagged_exact": round(table.loc["clean test", "exact"], 4),
        "clean_flagged_projected": round(table.loc["clean test", "projected"], 4),
        "fault_auroc_mean_exact": round(faults["auroc_exact"].mean(), 4),
        "fault_auroc_mean_projected": round(faults["auroc_projected"].mean(), 4),
        "largest_flagged_difference": round(float((table["exact"] - table["projected"]).abs().max()), 4),
        "largest_disagreement": round(float(table["disagree"].max()), 4),
        "spearman": round(spearman, 5), **cost, "novelty_cost_saved": round(saved, 3),
    }
    print(f"far AUROC: exact {figures['auroc_far_exact']:.4f}, projected {figures['auroc_far_projected']:.4f}; "
          f"mean fault AUROC: exact {figures['fault_auroc_mean_exact']:.4f}, "
          f"projected {figures['fault_auroc_mean_projected']:.4f}")
    print(f"flagged shares differ by at most {figures['largest_flagged_difference']:.2%} in any set; the two "
          f"disagree on at most {figures['largest_disagreement']:.2%} of a set's images; Spearman {spearman:.5f}")
    print(f"2,000 images: the model {cost['model_ms']:.0f} ms, with the exact novelty "
          f"{cost['with_exact_novelty_ms']:.0f} ms, with the projected {cost['with_projected_novelty_ms']:.0f} ms "
          f"({saved:.0%} of the novelty's cost saved)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
