"""The ``batchml`` command line: ingest, train, sweep, models, score, monitor, labels, report,
doctor, dashboard, demo.

Here: the console script and the parser of its verbs (the verbs: ``batchml.cli.train_verbs``,
``batchml.cli.run_verbs``, ``batchml.cli.label_verbs``; the arguments they share: ``batchml.cli.args``).

Environment read by ``batchml.cli``, and nowhere else in batchml: ``BATCHML_ROOT`` (default store),
``BATCHML_STORAGE_OPTIONS`` (JSON fsspec options), ``AWS_ENDPOINT_URL`` (S3 endpoint),
``KERAS_BACKEND`` and ``BATCHML_NOTIFY_TOKEN`` (a bearer token for ``--notify``). Exit codes:
0 ok, 1 an alert of severity error (``doctor``: damage found), 2 an error (a clear message for a
``BatchmlError``, the traceback for anything unexpected), 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from typing import NoReturn

from batchml.cli.args import (
    cluster_arguments,
    notify_arguments,
    port_number,
    positive,
    scoring_arguments,
    store_arguments,
    training_arguments,
)
from batchml.cli.label_verbs import add_label_verbs
from batchml.cli.output import disk_full, exit_now, stdout_gone, unexpected, warning_printer
from batchml.cli.run_verbs import cmd_dashboard, cmd_demo, cmd_doctor, cmd_monitor, cmd_report, cmd_score
from batchml.cli.train_verbs import (
    cmd_ingest,
    cmd_models_list,
    cmd_models_promote,
    cmd_models_show,
    cmd_sweep,
    cmd_train,
)
from batchml.data.datasets import DEFAULT_PARTITION_SIZE
from batchml.demo import DemoConfig
from batchml.errors import BatchmlError
from batchml.registry import DEFAULT_ALIAS
from batchml.train.recipes import TUNABLE


def run(argv: list[str] | None = None) -> NoReturn:
    """The console script: ``main``'s exit code and nothing after it."""
    exit_now(main(argv))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = warning_printer()
        try:
            return args.func(args) or 0
        except BatchmlError as exc:
            print(f"batchml: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("batchml: interrupted; nothing partial was committed", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader (| head) has what it wanted
            stdout_gone()
            return 0
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                print(disk_full("batchml", exc), file=sys.stderr)
                return 2
            return unexpected("batchml")
        except Exception:  # a crash is a failure (2), never mistaken for an alert (1)
            return unexpected("batchml")


def build_parser() -> argparse.ArgumentParser:
    store, cluster = store_arguments(), cluster_arguments()
    parser = argparse.ArgumentParser(prog="batchml", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("ingest", parents=[store], help="write input partitions from images")
    p.add_argument("source", help="folder or .tar(.gz) of class folders, CIFAR-10 python batches, 'cifar10', or "
                   "a URL of class folders or images (s3://bucket/prefix/, any fsspec URL; a local --root "
                   "passes its --storage-options to it)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--partition-size", type=positive, default=DEFAULT_PARTITION_SIZE, help="images per partition")
    p.add_argument("--classes", help="comma-separated class names, in label order (default: sorted folders)")
    p.set_defaults(func=cmd_ingest)

    p = verbs.add_parser("train", parents=[store, cluster], help="train a model as a Dask task and register it")
    p.add_argument("--dataset", required=True)
    p.add_argument("--test-dataset", help="labelled dataset for the card's test metrics and reference")
    training_arguments(p)
    p.add_argument("--warm-start", metavar="VERSION", help="fine-tune this registered [NAME/]VERSION or alias "
                   "(its architecture and weights; learning rate a tenth of the recipe's unless given)")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("sweep", parents=[store, cluster],
                         help="hyperparameter search: trials in parallel across the workers, best registered")
    p.add_argument("--dataset", required=True)
    p.add_argument("--test-dataset", help="labelled dataset, used once: for the chosen model")
    training_arguments(p)
    p.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                   help=f"values to try (repeatable): {', '.join(TUNABLE)}")
    p.add_argument("--trials", type=int, help="random search: this many points of the grid (default: all)")
    p.add_argument("--sweep-id", help="default sweep-<UTC time>; rerun an id to finish its missing trials")
    p.set_defaults(func=cmd_sweep)

    p = verbs.add_parser("models", help="list, show and promote model versions")
    mverbs = p.add_subparsers(dest="models_verb", required=True)
    q = mverbs.add_parser("list", parents=[store])
    q.set_defaults(func=cmd_models_list)
    q = mverbs.add_parser("show", parents=[store])
    q.add_argument("version", help="[NAME/]VERSION or alias, e.g. v2, cifar10/v2, production")
    q.set_defaults(func=cmd_models_show)
    q = mverbs.add_parser("promote", parents=[store])
    q.add_argument("version")
    q.add_argument("--alias", default=DEFAULT_ALIAS)
    q.set_defaults(func=cmd_models_promote)

    p = verbs.add_parser("score", parents=[store, cluster, scoring_arguments()],
                         help="score a dataset: one task per partition")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", help="an ingested dataset")
    what.add_argument("--images", help="or a prefix of raw .jpg/.png files: a folder or s3://bucket/prefix")
    p.add_argument("--run-id", help="run id; rerunning an id resumes it (default <dataset>-<UTC time>)")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                   help="skip input health, duplicate hashes and novelty (only to measure what they cost)")
    p.set_defaults(func=cmd_score)

    p = verbs.add_parser("monitor", parents=[store, notify_arguments()],
                         help="fold a committed run into the monitoring tables, or summarise a date range")
    p.add_argument("--run-id", help="the committed run to monitor")
    p.add_argument("--since", help="instead of --run-id: summarise runs committed from this date (YYYY-MM-DD)")
    p.add_argument("--until", help="... to this date, inclusive")
    p.add_argument("--model", help="only this model's runs (NAME/vN, or an alias such as production)")
    p.add_argument("--accept-baseline", metavar="RUN_ID",
                   help="record that this monitored run's class mix is the new normal: sustained-shift "
                        "alerts stop and the nightly baseline restarts from it (the latest acceptance wins; "
                        "with --run-id, then monitor that run)")
    p.add_argument("--note", help="with --accept-baseline: why (kept in the record; re-accepting without "
                   "--note keeps the earlier one)")
    p.add_argument("--config", metavar="FILE", help="alert thresholds from a TOML file (keys: "
                   "batchml.monitoring.MonitorConfig; see the README)")
    p.add_argument("--segment", metavar="VALUE", help="with --run-id: report this segment of a run scored with "
                   "--segment-by (its figures and the alerts that name it)")
    p.set_defaults(func=cmd_monitor)

    add_label_verbs(verbs, store)

    p = verbs.add_parser("report", parents=[store], help="one self-contained HTML page of a monitored night")
    p.add_argument("--run-id", required=True, help="a monitored run")
    p.add_argument("--out", required=True, metavar="FILE.html", help="where to write the page")
    p.add_argument("--dashboard-url", help="the dashboard's address, linked from the page")
    p.set_defaults(func=cmd_report)

    p = verbs.add_parser("doctor", parents=[store, cluster],
                         help="check a store: name each damaged file, what depends on it and its repair")
    p.add_argument("--repair", action="store_true",
                   help="move damaged files under <root>/quarantine/ (never deleted), score again the partitions "
                   "they held (on the cluster), monitor again")
    p.set_defaults(func=cmd_doctor)

    p = verbs.add_parser("dashboard", parents=[store], help="serve the monitoring dashboard (Panel)")
    p.add_argument("--port", type=port_number, default=5006)
    p.add_argument("--address", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--refresh", type=int, default=30, help="seconds between checks for new runs")
    p.add_argument("--basic-auth", default=os.environ.get("BATCHML_DASHBOARD_PASSWORD"),
                   help="a JSON file of user: password (or a shared password; in $BATCHML_DASHBOARD_PASSWORD "
                   "ps does not show it) required to log in")
    p.add_argument("--cookie-secret", default=os.environ.get("BATCHML_COOKIE_SECRET"),
                   help="signs login cookies; required with --basic-auth (e.g. python -c 'import secrets; "
                   "print(secrets.token_urlsafe(32))')")
    p.add_argument("--allow-websocket-origin", action="append", default=[], metavar="HOST[:PORT]",
                   help="a host name browsers use to reach the dashboard (repeatable): its DNS name, or the "
                   "reverse proxy's; ADDRESS:PORT and localhost:PORT are always allowed")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                   help="a reverse proxy's address (repeatable): from it, the login throttle counts tries per "
                   "client by X-Forwarded-For; from anyone else that header is ignored")
    p.set_defaults(func=cmd_dashboard)

    p = verbs.add_parser("demo", parents=[store, cluster], help="the whole flow on real CIFAR-10")
    p.add_argument("--source", help="CIFAR-10 source (default ../shared/data/cifar10-jpeg.tar.gz if present)")
    p.add_argument("--epochs", type=positive, default=DemoConfig.epochs,
                   help="fast-net epochs (default %(default)s: about 6 minutes of training on 2 cores)")
    p.add_argument("--night-size", type=positive, default=DemoConfig.night_size, help="images per simulated night")
    p.set_defaults(func=cmd_demo)
    return parser


if __name__ == "__main__":
    sys.exit(main())
