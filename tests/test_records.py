"""Stores written before the records had a schema version still read, and the layout parses
what it writes."""

from __future__ import annotations

import pytest

from batchml.data import datasets
from batchml.errors import BatchmlError
from batchml.layout import DATASET_MANIFEST, ModelVersion, dataset_path
from batchml.records import DatasetManifest, RunManifest

# dataset.json as ingest wrote it before DatasetManifest (no schema_version)
OLD_DATASET = {
    "name": "night", "source": "class folders in /in (split test)", "split": "test", "classes": ["a", "b"],
    "partition_size": 2000, "partitions": [{"name": "part-00000.parquet", "rows": 3, "labelled": 2,
                                            "sha256": "ab"}],
    "rows": 3, "labelled": 2, "fingerprint": "cd", "created_at": "2026-11-28T01:00:00+00:00",
}
# manifest.json as scoring wrote it before RunManifest, from a run.json without partition_size
OLD_RUN = {
    "run_id": "night-1", "dataset": "night", "input": "dataset", "dataset_fingerprint": "cd",
    "model_version": "cifar10/v2", "model_ref": "production", "created_at": "2026-11-28T01:00:00+00:00",
    "classes": ["a", "b"], "batch_size": "auto", "max_error_ratio": 0.01, "rows": 3, "errors": 0, "labelled": 2,
    "batch_sizes_used": [512], "devices": [], "partitions": [], "wall_seconds": 1.5, "images_per_second": 2.0,
    "committed_at": "2026-11-28T01:00:01.500+00:00",
}


def test_an_old_dataset_manifest_reads_with_attributes(store):
    store.write_json(dataset_path("night", DATASET_MANIFEST), OLD_DATASET)
    m = datasets.read_manifest(store, "night")
    assert (m.classes, m.rows, m.fingerprint, m.schema_version) == (["a", "b"], 3, "cd", 0)
    assert m["partitions"][0]["name"] == "part-00000.parquet"  # subscripting still works
    assert DatasetManifest.from_dict(m.to_dict()) == m


def test_an_old_run_manifest_reads_and_keeps_keys_it_does_not_know():
    m = RunManifest.from_dict({**OLD_RUN, "added_later": 1})
    assert m.partition_size is None and m.schema_version == 0
    assert ModelVersion.parse(m.model_version) == ModelVersion("cifar10", "v2")
    assert m.to_dict()["added_later"] == 1


def test_a_model_version_string_without_a_name_is_refused():
    with pytest.raises(BatchmlError, match="NAME/vN"):
        ModelVersion.parse("v2")
