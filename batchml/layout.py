"""Every name and path under a store root, in one place: no other module formats a store path.

::

    images/<dataset>/part-NNNNN.parquet         input partitions
    images/<dataset>/dataset.json               the dataset's manifest, written last by ingest
    models/<name>/vN/model.keras, card.json     a model version (committed when its card exists)
    models/<name>/vN/novelty.npz                its novelty reference (class means, whitening), if any
    models/<name>/vN/claim.json                 who claimed the version number
    models/<name>/aliases.json                  alias -> version
    runs/<run_id>/run.json                      what the run scores, written first (create-exclusive)
    runs/<run_id>/appends/append-NNNNN.json     files added to the run later (``score --append``)
    runs/<run_id>/predictions|failures|errors/part-NNNNN.parquet
    runs/<run_id>/hashes/part-NNNNN.parquet     per row: image_id, content and perceptual hashes
    runs/<run_id>/stats/part-NNNNN.json         a partition's statistics: the partition is done
    runs/<run_id>/manifest.json                 written last: the run is committed
    runs/<run_id>/labels/<batch>.parquet        a batch of late labels (``batchml labels add``)
    runs/<run_id>/labels/commit-NNNNN.json      its record, written last: the batch counts
    sweeps/<id>/sweep.json, trials.parquet      a sweep's plan and result, one row per trial
    sweeps/<id>/trial-NNN/model.keras, card.json
    monitoring/<table>/<run_id>.parquet         tables runs, alerts, failures: one file per run
    monitoring/accepted/<run_id>.json           a run whose class mix was accepted as the baseline
    quarantine/<UTC time>/<path>                damaged files moved aside by ``batchml doctor --repair``
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from batchml.errors import BatchmlError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # dataset, model, run and alias names
_VERSION = re.compile(r"^v(\d+)$")

DATASETS, MODELS, RUNS, SWEEPS, MONITORING = "images", "models", "runs", "sweeps", "monitoring"
QUARANTINE = "quarantine"
DATASET_MANIFEST = "dataset.json"
MODEL_FILE, CARD_FILE, CLAIM_FILE = "model.keras", "card.json", "claim.json"
NOVELTY_FILE = "novelty.npz"  # a version's novelty reference (``batchml.train.novelty``), written before its card


# a name becomes a file name, under a temporary name while it is written (``.tmp-<32 hex>-<name>.parquet``):
# a longer one is refused by the file system's 255-byte limit after the night has been scored
MAX_NAME = 200


def check_name(kind: str, name: str) -> str:
    """Dataset, model and run names become paths: keep them to safe characters."""
    if not NAME_PATTERN.match(name or ""):
        raise BatchmlError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def check_new_name(kind: str, name: str) -> str:
    """``check_name``, and a length every file it names allows: for a name about to be created
    (readers of older stores only check the characters)."""
    check_name(kind, name)
    if len(name) > MAX_NAME:
        raise BatchmlError(f"{kind} name {name[:40]}... is {len(name)} characters long: keep it to {MAX_NAME}")
    return name


# -- datasets ----------------------------------------------------------------------------------


def partition_name(index: int) -> str:
    """The ``index``-th partition of a dataset or of a prefix of files."""
    return f"part-{index:05d}.parquet"


def dataset_path(dataset: str, name: str = "") -> str:
    """A dataset's folder, or ``name`` in it (a partition, or ``DATASET_MANIFEST``)."""
    return "/".join(p for p in (DATASETS, check_name("dataset", dataset), name) if p)


# -- model versions ----------------------------------------------------------------------------


def is_version(tag: str) -> bool:
    return bool(_VERSION.match(tag))


def version_number(tag: str) -> int:
    """``v12`` -> 12."""
    return int(_VERSION.match(tag).group(1))


def version_tag(number: int) -> str:
    return f"v{number}"


def model_prefix(name: str) -> str:
    return f"{MODELS}/{check_name('model', name)}"


def aliases_path(name: str) -> str:
    return f"{model_prefix(name)}/aliases.json"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"

    @classmethod
    def parse(cls, text: str) -> ModelVersion:
        """``NAME/vN`` (as ``str`` writes it) -> a ModelVersion; the name checked as every name is, so
        that no version string can reach outside ``models/``."""
        name, sep, version = text.rpartition("/")
        if not sep or not name or not is_version(version):
            raise BatchmlError(f"model version {text!r} is not NAME/vN, e.g. cifar10/v2")
        return cls(check_name("model", name), version)

    @property
    def prefix(self) -> str:
        return f"{model_prefix(self.name)}/{self.version}"

    @property
    def model_path(self) -> str:
        return f"{self.prefix}/{MODEL_FILE}"

    @property
    def card_path(self) -> str:
        return f"{self.prefix}/{CARD_FILE}"

    @property
    def claim_path(self) -> str:
        return f"{self.prefix}/{CLAIM_FILE}"

    @property
    def novelty_path(self) -> str:
        return f"{self.prefix}/{NOVELTY_FILE}"


# -- runs --------------------------------------------------------------------------------------


RUN_SPEC = "run.json"  # what the run scores, written when it starts
RUN_MANIFEST = "manifest.json"  # written last: it commits the run


def run_path(run_id: str, name: str = "") -> str:
    """A run's folder, or ``name`` in it: a file (``RUN_SPEC``, ``RUN_MANIFEST``) or the folder of a
    kind of per-partition output (``predictions``, ``failures``, ``errors``, ``hashes``, ``stats``)."""
    return "/".join(p for p in (RUNS, check_name("run", run_id), name) if p)


def run_output(run_id: str, kind: str, partition: str) -> str:
    """A partition's Parquet output of ``kind`` (``predictions``, ``failures``, ``errors``, ``hashes``)."""
    return f"{run_path(run_id, kind)}/{partition}"


def run_appends(run_id: str) -> str:
    """The folder of a run's append records (``batchml score --append``)."""
    return run_path(run_id, "appends")


def run_append(run_id: str, number: int) -> str:
    """The ``number``-th append record of a run (0 first)."""
    return f"{run_appends(run_id)}/append-{number:05d}.json"


def run_hashes(run_id: str, partition: str) -> str:
    """A partition's hashes (``batchml.records.HASHES_SCHEMA``): duplicates within a run and across nights."""
    return run_output(run_id, "hashes", partition)


def stats_name(partition: str) -> str:
    """The statistics file of a partition: ``part-N.parquet`` -> ``part-N.json``."""
    return partition.removesuffix(".parquet") + ".json"


def run_stats(run_id: str, partition: str) -> str:
    return f"{run_path(run_id, 'stats')}/{stats_name(partition)}"


def run_labels(run_id: str) -> str:
    """The folder of a run's late labels (``batchml.labels``)."""
    return run_path(run_id, "labels")


def label_rows(run_id: str, batch_id: str) -> str:
    """A batch's label rows (``batchml.records.LABEL_SCHEMA``); ``batch_id`` derived from its content."""
    if not re.fullmatch(r"[0-9a-f]{16,64}", batch_id):
        raise BatchmlError(f"label batch id {batch_id!r} is not a hex digest")
    return f"{run_labels(run_id)}/{batch_id}.parquet"


LABEL_COMMIT = re.compile(r"^commit-(\d{5})\.json$")


def label_commit(run_id: str, number: int) -> str:
    """The ``number``-th batch committed to the run (0 first), created exclusively: the batches' order."""
    return f"{run_labels(run_id)}/commit-{number:05d}.json"


# -- sweeps ------------------------------------------------------------------------------------


SWEEP_PLAN, SWEEP_TRIALS = "sweep.json", "trials.parquet"  # the plan, then the result; one row per trial


def sweep_path(sweep_id: str, name: str = "") -> str:
    """A sweep's folder, or ``name`` in it (``SWEEP_PLAN``, ``SWEEP_TRIALS``, ``trial_name(i)``)."""
    return "/".join(p for p in (SWEEPS, check_name("sweep", sweep_id), name) if p)


def trial_name(trial: int) -> str:
    """A trial's folder (its model and card) in its sweep's, until the sweep registers its best."""
    return f"trial-{trial:03d}"


def trial_path(sweep_id: str, trial: int, name: str) -> str:
    """A trial's ``MODEL_FILE`` or ``CARD_FILE``."""
    return f"{sweep_path(sweep_id, trial_name(trial))}/{name}"


# -- monitoring --------------------------------------------------------------------------------


def monitoring_folder(table: str) -> str:
    """A monitoring table's folder: ``runs``, ``alerts`` or ``failures``."""
    return f"{MONITORING}/{table}"


def monitoring_path(table: str, run_id: str) -> str:
    """A run's file in a monitoring table."""
    return f"{monitoring_folder(table)}/{run_id}.parquet"


def monitoring_file(table: str, name: str) -> str:
    """A file of a monitoring table's folder by its listed name (``<run_id>.parquet``)."""
    return f"{monitoring_folder(table)}/{name}"


def accepted_folder() -> str:
    """Runs accepted as a model's baseline (``batchml monitor --accept-baseline``)."""
    return f"{MONITORING}/accepted"


def accepted_path(run_id: str) -> str:
    return f"{accepted_folder()}/{check_name('run', run_id)}.json"


def accepted_file(name: str) -> str:
    """An accepted record by its listed name (``<run_id>.json``)."""
    return f"{accepted_folder()}/{name}"


# -- quarantine --------------------------------------------------------------------------------


def quarantine_path(stamp: str, rel: str) -> str:
    """Where ``batchml doctor --repair`` moves the damaged file ``rel`` (``stamp``: the repair's UTC time)."""
    return f"{QUARANTINE}/{stamp}/{rel}"
