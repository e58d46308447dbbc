"""The ``batchml`` command line (the console script: ``batchml.cli:run``).

``app`` holds the console script and the parser of the verbs; ``args`` the arguments that the
verbs and the jobs share and the values they become; ``output`` how it prints and exits; the
verbs by stage: ``train_verbs`` (ingest, train, sweep, models), ``run_verbs`` (score,
monitor, report, doctor, dashboard, demo) and ``label_verbs`` (labels add). Import from here.
"""

from batchml.cli.app import build_parser, main, run
from batchml.cli.args import (
    cifar10_source,
    cluster_arguments,
    cluster_config,
    iso_date,
    notify_arguments,
    open_store,
    port_number,
    positive,
    scoring_arguments,
    send_night,
    setting_arguments,
    store_arguments,
    train_config,
    training_arguments,
)
from batchml.cli.output import disk_full, exit_now, say, stdout_gone, unexpected

__all__ = [
    "build_parser", "cifar10_source", "cluster_arguments", "cluster_config", "disk_full", "exit_now", "iso_date",
    "main", "notify_arguments", "open_store", "port_number", "positive", "run", "say", "scoring_arguments",
    "send_night", "setting_arguments", "stdout_gone", "store_arguments", "train_config", "training_arguments",
    "unexpected",
]
