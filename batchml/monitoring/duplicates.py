"""Duplicated images: exact copies (the same bytes) and near copies (a difference hash within a few
bits: re-encoded, resized or brightened): exact copies within a run and against the recent nights,
near copies within the run.

A replayed batch or an upstream job that writes some files twice is not n independent images: the
class-mix tests then count the de-duplicated mix. Reads the runs' hashes files
(``layout.run_hashes``: 16 bytes a row), never the images or predictions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchml import layout
from batchml.data.health import hamming
from batchml.integrity import read_parquet
from batchml.records import RunManifest
from batchml.store import Store

NEAR_BITS = 6  # a JPEG re-encoding of a CIFAR image moves a median of 3 of 64 bits, 90% within 7
NEAR_PAIRS_MAX = 400_000_000  # beyond this many hash comparisons, near copies are found by equal hashes alone
CHUNK = 512  # rows compared at once


def read_hashes(store: Store, run: RunManifest) -> pd.DataFrame:
    """A committed run's hashes (image_id, content_hash, perceptual_hash, predicted, segment), in
    partition order; empty for runs scored before hashes were kept."""
    parts = [read_parquet(store, path).to_pandas() for p in run.partitions
             if store.exists(path := layout.run_hashes(run.run_id, p["partition"]))]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["image_id", "content_hash", "perceptual_hash", "predicted", "segment"])


def duplicates(tonight: pd.DataFrame, recent: dict[str, pd.DataFrame], num_classes: int) -> dict:
    """Tonight's duplicates: rows whose bytes repeat an earlier row of tonight (``duplicate_within``)
    or a row of a recent night (``duplicate_recent``), rows that are near copies of either
    (``near_duplicate``, not counted as exact), an example pair, and the class mix over the rows
    left when every copy within tonight is dropped (``predicted_counts_unique``)."""
    if tonight.empty:
        return {}
    content = tonight.content_hash.to_numpy(np.uint64)
    within = pd.Series(content).duplicated().to_numpy()
    earlier = pd.concat(list(recent.values()), ignore_index=True) if recent else None
    run_of = np.concatenate([[r] * len(h) for r, h in recent.items()]) if recent else np.array([])
    in_recent = (np.isin(content, earlier.content_hash.to_numpy(np.uint64)) if earlier is not None
                 else np.zeros(len(tonight), bool))
    exact = within | in_recent
    # near copies within tonight only: against a week of nights, images with flat regions (dark
    # corners, plain skies) share most hash bits by chance
    near, partner, method = _near(tonight.perceptual_hash.to_numpy(np.uint64), None,
                                  tonight.predicted.to_numpy(np.int64))
    near &= ~exact
    unique = ~(within | near & (partner < len(tonight)))  # copies within tonight go; firsts stay
    counts = np.bincount(tonight.predicted.to_numpy(np.int64)[unique], minlength=num_classes)
    return {"duplicate_within": int(within.sum()), "duplicate_recent": int((in_recent & ~within).sum()),
            "near_duplicate": int(near.sum()), "near_duplicate_method": method,
            "duplicate_example": _example(tonight, within, in_recent, near, partner, earlier, run_of),
            "recent_nights_compared": len(recent), "predicted_counts_unique": counts.tolist()}


def _near(tonight: np.ndarray, earlier: np.ndarray | None, predicted: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray, str]:
    """For each row of tonight: whether its difference hash is within ``NEAR_BITS`` of an earlier row of
    tonight or of any recent row, and which (an index into tonight, then the recent rows; -1: none).
    Given tonight's ``predicted`` classes, a near copy within tonight must also be read as the same
    class: a re-encoded copy is, while unrelated images that a strong common gradient (vignetting,
    flat synthetic scenes) gives the same hash are read as all sorts of classes."""
    pool = tonight if earlier is None else np.concatenate([tonight, earlier])
    n = len(tonight)
    partner = np.full(n, -1)
    if n * len(pool) > NEAR_PAIRS_MAX:  # a large night: equal hashes only
        keys = [tonight] if predicted is None else [tonight, predicted]  # grouped by columns, not by Python tuples
        first = pd.Series(np.arange(n)).groupby(keys).transform("min").to_numpy()
        partner[first < np.arange(n)] = first[first < np.arange(n)]
        if earlier is not None:
            seen = pd.Series(np.arange(len(earlier)) + n).groupby(earlier).min()
            hit = pd.Series(tonight).map(seen).to_numpy()
            partner = np.where((partner < 0) & ~np.isnan(hit), np.nan_to_num(hit, nan=-1), partner).astype(int)
        return partner >= 0, partner, "equal hashes"
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(start + CHUNK, n))
        bits = hamming(tonight[rows, None], pool[None, :]).astype(np.int16)
        later = np.arange(n)[None, :] >= rows[:, None]  # compare with earlier rows of tonight only
        if predicted is not None:
            later |= predicted[None, :] != predicted[rows, None]
        bits[:, :n][later] = 99
        best = bits.argmin(axis=1)
        close = bits[np.arange(len(rows)), best] <= NEAR_BITS
        partner[rows[close]] = best[close]
    return partner >= 0, partner, f"within {NEAR_BITS} bits"


def _example(tonight, within, in_recent, near, partner, earlier, run_of) -> str | None:
    """One pair, in words: "a.jpg is a copy of b.jpg (tonight)"."""
    ids = tonight.image_id.to_numpy()
    if within.any():
        i = int(np.argmax(within))
        first = int(np.argmax(tonight.content_hash.to_numpy() == tonight.content_hash.iloc[i]))
        return f"{ids[i]} is a copy of {ids[first]} (tonight)"
    if in_recent.any():
        i = int(np.argmax(in_recent))
        j = int(np.argmax(earlier.content_hash.to_numpy() == tonight.content_hash.iloc[i]))
        return f"{ids[i]} is a copy of {earlier.image_id.iloc[j]} (run {run_of[j]})"
    if near.any():
        i = int(np.argmax(near))
        j = int(partner[i])
        where = ("tonight", ids[j]) if j < len(ids) else (f"run {run_of[j - len(ids)]}", earlier.image_id.iloc[
            j - len(ids)])
        return f"{ids[i]} is a near copy of {where[1]} ({where[0]})"
    return None
