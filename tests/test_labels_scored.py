"""Late labels on real runs (a Dask cluster, a trained model): the same images scored once with
their labels and once without, the labels added later; and a run whose model version is no longer
production."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batchml.data import datasets
from batchml.data.ingest import write_dataset
from batchml.data.sources import Source, SourceImage
from batchml.labels import add_labels
from batchml.layout import ModelVersion
from batchml.monitoring import fold_run, monitor_run
from batchml.records import ModelCard, RunManifest
from batchml.registry import promote, register, resolve
from batchml.score.scoring import ScoreConfig, score
from batchml.stats import LABEL_FIELDS
from tests.conftest import copy_store

MODEL = "shapes/production"


@pytest.fixture(scope="module")
def both(client, trained_store, tmp_path_factory):
    """Runs 'ingest' (shapes-test, labelled) and 'late' (the same images, unlabelled)."""
    store = copy_store(trained_store, tmp_path_factory.mktemp("labels") / "store")
    manifest = datasets.read_manifest(store, "shapes-test")
    rows = [r for p in manifest.partitions
            for r in datasets.read_partition(store, "shapes-test", p["name"]).to_pylist()]
    unlabelled = (SourceImage(r["image_id"], r["image"], None) for r in rows)
    write_dataset(store, Source("shapes-test without labels", manifest.classes, unlabelled), "shapes-unlabelled",
                  "test", manifest.partition_size, verbose=False)
    score(client, store, ScoreConfig("shapes-test", MODEL, "ingest"), verbose=False)
    score(client, store, ScoreConfig("shapes-unlabelled", MODEL, "late"), verbose=False)
    return store


def predictions(store, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(store.path(f"runs/{run_id}/predictions")).sort_values("image_id").reset_index(drop=True)


@pytest.mark.slow
def test_late_labels_on_a_scored_run_equal_the_same_labels_at_ingest(both, tmp_path):
    store = both
    ingest, late = predictions(store, "ingest"), predictions(store, "late")
    assert np.array_equal(np.stack(ingest.probabilities), np.stack(late.probabilities))  # the same night
    assert late.label.isna().all() and ingest.label.notna().all()
    labels = ingest[["image_id", "label"]].sample(frac=1.0, random_state=0)
    half, classes = len(labels) // 2, RunManifest.read(store, "late").classes
    # one batch of class names, one of indices
    names = labels[:half].assign(label=[classes[int(v)] for v in labels[:half].label])
    for i, part in enumerate((names, labels[half:].astype({"label": int}))):
        path = tmp_path / f"batch-{i}.csv"
        part.to_csv(path, index=False)
        add_labels(store, str(path), ["late"])
    folded, at_ingest = fold_run(store, "late")[1], fold_run(store, "ingest")[1]
    for name in LABEL_FIELDS:
        assert np.array_equal(getattr(folded, name), getattr(at_ingest, name)), name
    late_row, ingest_row = monitor_run(store, "late").row, monitor_run(store, "ingest").row
    for name in ("labelled", "correct", "accuracy", "accuracy_low", "accuracy_high", "confusion", "precision",
                 "recall", "f1", "support", "realized_accuracy"):
        assert getattr(late_row, name) == getattr(ingest_row, name), name
    assert late_row.label_sampling == ["random"] and ingest_row.label_sampling == ["ingest"]


@pytest.mark.slow
def test_labels_for_a_run_whose_version_is_no_longer_production(both, tmp_path):
    store = both
    old = resolve(store, MODEL)
    card = ModelCard.from_dict(store.read_json(old.card_path))
    newer = register(store, "shapes", store.read_bytes(old.model_path), card)
    promote(store, newer, "production")
    assert resolve(store, MODEL) == newer != old
    ingest = predictions(store, "ingest")
    path = tmp_path / "labels.parquet"
    ingest[["image_id", "label"]].to_parquet(path)
    add_labels(store, str(path), ["late"], replace=True)  # whether or not the other test added them first
    row = monitor_run(store, "late").row
    assert ModelVersion.parse(row.model_version) == old and row.labelled == len(ingest)
