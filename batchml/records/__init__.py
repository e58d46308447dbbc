"""The records under the store root, one class each: every file a stage writes (a dataset
manifest, a run's start and manifest, a scored partition, a model card, aliases, a sweep) and
the rows of the monitoring tables (where they live: ``batchml.layout``).

Each has ``to_dict`` (what is written) and ``from_dict`` (what is read), and is read by
attribute. ``schema_version`` counts changes of shape: files written before records had it
read as version 0, and ``_upgrade`` turns an older shape into the current one, the one place
per record that knows older shapes. A key older writers lacked reads as None; keys a newer
writer added are kept in ``extra`` and written back, so an older reader loses nothing.

The records, by what writes them: ``base`` (what they share), ``runs`` (a dataset, a run's
start, partitions and manifest, the hashes table, a batch of late labels), ``card`` (the model card), ``registry``
(aliases, sweeps), ``monitoring`` (the failure-case table, monitoring rows, alerts, an accepted
baseline). Import them from here.
"""

from batchml.records.base import is_absent
from batchml.records.card import (
    MONITORING_NEEDS,
    SCORING_NEEDS,
    Calibration,
    Evaluation,
    Fit,
    Metrics,
    ModelCard,
    Reference,
    TrainingData,
)
from batchml.records.monitoring import FAILURE_SCHEMA, FAILURES_KEPT, AcceptedBaseline, Alert, MonitoringRow
from batchml.records.registry import Aliases, Sweep
from batchml.records.runs import (
    HASHES_SCHEMA,
    LABEL_SCHEMA,
    SAMPLINGS,
    DatasetManifest,
    LabelBatch,
    RunManifest,
    RunStart,
    ScoredPartition,
)

__all__ = [
    "FAILURES_KEPT",
    "FAILURE_SCHEMA",
    "HASHES_SCHEMA",
    "LABEL_SCHEMA",
    "MONITORING_NEEDS",
    "SAMPLINGS",
    "SCORING_NEEDS",
    "AcceptedBaseline",
    "Alert",
    "Aliases",
    "Calibration",
    "DatasetManifest",
    "Evaluation",
    "Fit",
    "LabelBatch",
    "Metrics",
    "ModelCard",
    "MonitoringRow",
    "Reference",
    "RunManifest",
    "RunStart",
    "ScoredPartition",
    "Sweep",
    "TrainingData",
    "is_absent",
]
