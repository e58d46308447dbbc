"""Labels that arrive after the night: checked, joined to a run's predictions and stored as
batches whose mergeable deltas monitoring folds into the run's statistics.

``file`` (a labels file read and checked), ``join`` (matched to predictions, partition by partition,
and the statistics they change), ``batches`` (``add_labels``: stored as one batch per run, written
last; the committed batches read back), ``realized`` (what the labels say about the night:
realized accuracy, reweighted where they were drawn by confidence).
"""

from batchml.labels.batches import (
    AddedLabels,
    LabelSources,
    add_labels,
    committed,
    known_labels,
    label_sources,
    late_delta,
    runs_between,
)
from batchml.labels.file import LabelsError, LabelsFile, read_labels
from batchml.labels.realized import realized, reweighted

__all__ = [
    "AddedLabels",
    "LabelSources",
    "LabelsError",
    "LabelsFile",
    "add_labels",
    "committed",
    "known_labels",
    "label_sources",
    "late_delta",
    "read_labels",
    "realized",
    "reweighted",
    "runs_between",
]
