"""The ``batchml`` command line: ingest, train, sweep, models, score, monitor, report, doctor,
dashboard, demo.

Environment read here, and only here: ``BATCHML_ROOT`` (default store),
``BATCHML_STORAGE_OPTIONS`` (JSON fsspec options), ``AWS_ENDPOINT_URL`` (S3 endpoint),
``KERAS_BACKEND`` and ``BATCHML_NOTIFY_TOKEN`` (a bearer token for ``--notify``). Exit codes:
0 ok, 1 an alert of severity error (``doctor``: damage found), 2 an error (a clear message for a
``BatchmlError``, the traceback for anything unexpected), 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
import traceback
import warnings
from datetime import date
from pathlib import Path
from typing import NoReturn

from batchml import layout
from batchml.backend import BACKENDS, DEFAULT_BACKEND, configure_backend
from batchml.data.datasets import DEFAULT_PARTITION_SIZE
from batchml.demo import DemoConfig
from batchml.errors import BatchmlError
from batchml.registry import DEFAULT_ALIAS, resolve
from batchml.store import DEFAULT_ROOT, Store, StoreConfig
from batchml.train.recipes import RECIPES, SETTINGS, TUNABLE, recipe_defaults, setting_type


def run(argv: list[str] | None = None) -> NoReturn:
    """The console script: ``main``'s exit code and nothing after it."""
    exit_now(main(argv))


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` at once, output flushed. The frameworks' threads can abort the
    interpreter's teardown ("terminate called without an active exception", exit 134) after the
    work is done and reported, and a nightly scheduler must see 0, 1 or 2."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
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


def disk_full(prog: str, exc: OSError) -> str:
    where = f" writing {exc.filename}" if exc.filename else ""
    return (f"{prog}: error: no space left on the device{where} ({exc.strerror}). Nothing partial was committed: "
            "free space (or point --root elsewhere), then rerun the same command; a run resumes where it stopped")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """batchml's own warnings as one line each ("batchml: WARNING: ..."); others as Python shows them."""
    from batchml.integrity import DamagedFileWarning

    if issubclass(category, DamagedFileWarning):
        print(f"batchml: WARNING: {message}", file=sys.stderr, flush=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def say(text: str) -> None:
    """Print a line of the report; a reader that has gone (``| head``) ends the output, not the work."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_gone()


def stdout_gone() -> None:
    """Point stdout at /dev/null: the reader closed the pipe, and flushing at exit must not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def unexpected(prog: str) -> int:
    """Exit code 2 for an exception batchml did not foresee, with its traceback for the log."""
    traceback.print_exc()
    print(f"{prog}: unexpected error (the traceback above); nothing partial was committed. "
          "Rerun to resume; report it if it repeats.", file=sys.stderr)
    return 2


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use 1 to 65535 (e.g. 5006)")
    return value


def cifar10_source() -> str:
    """CIFAR-10 for the demo and the benchmarks: ``../shared/data/cifar10-jpeg.tar.gz`` beside the
    working folder or the checkout (this project's copy), else Keras's download."""
    from batchml.data.sources import find_source

    checkout = Path(__file__).resolve().parents[1]
    return find_source(base.parent / "shared" / "data" for base in (Path.cwd(), checkout))


def iso_date(flag: str, text: str | None) -> str | None:
    """A ``YYYY-MM-DD`` flag value, or a clear error (a word like 'yesterday' would match nothing)."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise BatchmlError(f"{flag} {text!r} is not a date: use YYYY-MM-DD, e.g. {flag} 2026-11-01") from None


# -- arguments ---------------------------------------------------------------------------------


def store_arguments() -> argparse.ArgumentParser:
    """``--root`` and ``--storage-options``, shared by every verb and by the jobs."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--root", default=os.environ.get("BATCHML_ROOT", DEFAULT_ROOT),
                       help="store URL: a folder or s3://bucket/prefix (default $BATCHML_ROOT or %(default)s)")
    store.add_argument("--storage-options", default=os.environ.get("BATCHML_STORAGE_OPTIONS"),
                       help='fsspec options as JSON, e.g. \'{"client_kwargs": {"endpoint_url": "http://host:9000"}}\'')
    store.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return store


def cluster_arguments() -> argparse.ArgumentParser:
    """Where the Dask work runs: an existing scheduler, or a local cluster."""
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--scheduler", help="existing Dask scheduler, tcp://host:8786 or tls://...")
    cluster.add_argument("--workers", type=positive,
                         help="local cluster: worker processes (default one per GPU, else 1)")
    cluster.add_argument("--threads-per-worker", type=int, default=2,
                         help="local cluster: task threads per worker (one runs the model, one does I/O)")
    cluster.add_argument("--backend", choices=BACKENDS, default=os.environ.get("KERAS_BACKEND", DEFAULT_BACKEND),
                         help="Keras backend on the workers (default $KERAS_BACKEND or %(default)s: JAX on a worker "
                         "that sees a GPU and has JAX with CUDA, else TensorFlow)")
    cluster.add_argument("--cpu", action="store_true", help="local cluster on the CPU even where GPUs are visible")
    cluster.add_argument("--require-gpu", action="store_true",
                         help="fail (exit 2) unless every worker computes on a GPU, instead of warning")
    for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
        cluster.add_argument(flag, help="TLS for a tls:// scheduler")
    cluster.add_argument("--dask-dashboard-address", default="127.0.0.1:0", metavar="HOST:PORT",
                         help="local cluster: where Dask's own dashboard listens (it shows worker logs and task "
                         "stacks, without login): loopback by default; e.g. 0.0.0.0:8787 to open it")
    return cluster


def scoring_arguments() -> argparse.ArgumentParser:
    """How a run scores, shared by ``score`` and the nightly job (``--run-id`` and the input are each one's own)."""
    scoring = argparse.ArgumentParser(add_help=False)
    scoring.add_argument("--model", default=DEFAULT_ALIAS, help="[NAME/]VERSION or alias (default %(default)s)")
    scoring.add_argument("--partition-size", type=positive, default=DEFAULT_PARTITION_SIZE,
                         help="with --images: files per partition (pinned by the run: a resume must repeat it)")
    scoring.add_argument("--batch-size", type=positive, help="images per predict call (default: 512 on CPU; on a GPU "
                         "the largest that fits, halved on out-of-memory)")
    scoring.add_argument("--max-error-ratio", type=float, default=0.01,
                         help="undecodable images above this share fail the run (default %(default)s)")
    scoring.add_argument("--append", action="store_true",
                         help="with --images and a run whose prefix has grown: score only the new files into the "
                         "run (new partitions after its own), then commit it again; monitor it again afterwards")
    return scoring


def notify_arguments() -> argparse.ArgumentParser:
    """Where the night's report goes besides stdout: webhooks and a metrics file (monitor, the nightly job)."""
    from batchml.notify import FORMATS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--notify", action="append", default=[], metavar="URL",
                   help="POST the night's report here (repeatable): status, alerts, figures, a dashboard link. "
                   "Retried with backoff; never changes the exit code. $BATCHML_NOTIFY_TOKEN, if set, is sent "
                   "as a bearer token")
    p.add_argument("--notify-format", choices=FORMATS, default="json",
                   help="slack (incoming webhook), alertmanager (POST /api/v2/alerts) or json (default)")
    p.add_argument("--dashboard-url", help="the dashboard's address, linked from notifications and reports")
    p.add_argument("--metrics-file", metavar="PATH",
                   help="write Prometheus textfile-collector metrics (batchml_*) here, e.g. "
                   "/var/lib/node_exporter/textfile/batchml.prom")
    return p


def send_night(args, night) -> None:
    """The night to the metrics file and the webhooks of ``notify_arguments``; problems are warnings."""
    from batchml.notify import NotifyConfig, notify, write_metrics

    if args.metrics_file:
        try:
            write_metrics(args.metrics_file, night)
        except OSError as exc:
            print(f"batchml: WARNING: could not write --metrics-file {args.metrics_file}: {exc}", file=sys.stderr)
    if args.notify:
        cfg = NotifyConfig(tuple(args.notify), args.notify_format, os.environ.get("BATCHML_NOTIFY_TOKEN") or None,
                           secrets=_secrets(args))
        for problem in notify(night, cfg):
            print(f"batchml: WARNING: {problem}", file=sys.stderr, flush=True)


def _secrets(args) -> tuple[str, ...]:
    """Values that must never travel in a notification, should an error message quote one."""
    found = [os.environ.get(k) for k in ("BATCHML_NOTIFY_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    try:
        options = json.loads(args.storage_options) if args.storage_options else {}
    except json.JSONDecodeError:
        options = {}
    stack = [options]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [v for k, v in item.items() if isinstance(v, str) and any(
                w in k.lower() for w in ("secret", "key", "token", "password"))]
            stack += list(item.values())
    return tuple(v for v in found if v and len(v) >= 4)


def training_arguments(p: argparse.ArgumentParser) -> None:
    """Architecture and hyperparameters; unset ones take the architecture's recipe."""
    p.add_argument("--arch", default="tutorial", help=f"one of {', '.join(RECIPES)} (default %(default)s)")
    setting_arguments(p)
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="cifar10", help="model name in the registry")
    p.add_argument("--promote", nargs="?", const=DEFAULT_ALIAS, metavar="ALIAS",
                   help="point ALIAS (default %(const)s) at the new version")


def setting_arguments(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """A flag per ``batchml.train.recipes`` setting, made from its declaration; unset: the recipe's."""
    for s in SETTINGS:
        if s.name in skip:
            continue
        flag, kind = "--" + s.name.replace("_", "-"), setting_type(s)
        help = f"{s.metadata['help']} (default per --arch: {recipe_defaults(s.name)})"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=help)
        elif s.metadata["choices"]:
            p.add_argument(flag, choices=s.metadata["choices"], help=help)
        else:
            p.add_argument(flag, type=positive if s.metadata["minimum"] == 1 else kind, help=help)


def train_config(args):
    """The ``TrainConfig`` of ``train`` or ``sweep``: each flag's dest is the field's name
    (``--warm-start`` exists on ``train`` only)."""
    from dataclasses import fields

    from batchml.train.training import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})


def build_parser() -> argparse.ArgumentParser:
    store, cluster = store_arguments(), cluster_arguments()
    parser = argparse.ArgumentParser(prog="batchml", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("ingest", parents=[store], help="write input partitions from images")
    p.add_argument("source", help="folder or .tar(.gz) of class folders, CIFAR-10 python batches, or 'cifar10'")
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
    seg = p.add_mutually_exclusive_group()
    seg.add_argument("--segment-by", metavar="COLUMN",
                     help="keep statistics per value of this carried column (e.g. camera): the top 20 values "
                          "of each partition and '(other)'; alerts name the segment that moved")
    seg.add_argument("--segment-from-path", metavar="PATTERN",
                     help="with --images: the part of each file's path that names its segment, e.g. "
                          "'{camera}/**' (the first folder) or '**/{site}/*'; class folders keep giving labels")
    p.add_argument("--raw-orientation", action="store_true",
                   help="score pixels as stored, without turning photos by their EXIF orientation")
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
    p.set_defaults(func=cmd_monitor)

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


def open_store(args) -> Store:
    try:
        options = json.loads(args.storage_options) if args.storage_options else {}
    except json.JSONDecodeError as exc:
        # the value is not echoed: it may hold keys, and errors travel to logs and notifications
        raise BatchmlError(f"--storage-options (or $BATCHML_STORAGE_OPTIONS) is not valid JSON ({exc}): "
                           "pass a JSON object, e.g. '{\"anon\": true}'") from exc
    if "://" not in args.root and Path(args.root).expanduser().is_file():  # every reader would fail further on
        raise BatchmlError(f"--root {args.root} is a file: give the store's folder, or "
                           "s3://bucket/prefix")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if args.root.startswith("s3://") and endpoint and "endpoint_url" not in json.dumps(options):
        options = {**options, "client_kwargs": {**options.get("client_kwargs", {}), "endpoint_url": endpoint}}
    return Store(StoreConfig(args.root, options))


def cluster_config(args):
    from batchml.cluster import ClusterConfig

    try:
        configure_backend(args.backend)  # the client process too (on its CPU): it may load models
    except ValueError as exc:  # $KERAS_BACKEND, which argparse does not check against the choices
        raise BatchmlError(f"{exc} (from --backend or $KERAS_BACKEND)") from None
    return ClusterConfig(
        scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
        backend=args.backend, use_gpus=not args.cpu, require_gpu=args.require_gpu,
        tls_ca_file=args.tls_ca_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
        dashboard_address=args.dask_dashboard_address,
    )


# -- verbs -------------------------------------------------------------------------------------


def cmd_sweep(args) -> None:
    from batchml.cluster import connect
    from batchml.registry import ModelVersion, promote
    from batchml.train.sweep import SweepConfig, parse_space, sweep

    store = open_store(args)
    cfg = SweepConfig(train_config(args), parse_space(args.param), args.trials, args.sweep_id, args.seed)
    with connect(cluster_config(args), verbose=not args.quiet) as client:
        result = sweep(client, store, cfg, verbose=not args.quiet)
    test = f", test accuracy {result.test_accuracy:.4f}" if result.test_accuracy is not None else ""
    print(f"sweep {result.sweep_id}: {len(result.trials)} trials; best trial {result.best_trial} "
          f"{result.best_params} validation accuracy {result.best_validation_accuracy:.4f}{test}; "
          f"registered {result.registered}; "
          f"trials at {store.url(layout.sweep_path(result.sweep_id, layout.SWEEP_TRIALS))}")
    if args.promote:
        promote(store, ModelVersion.parse(result.registered), args.promote)
        print(f"{args.promote} -> {result.registered}")


def cmd_ingest(args) -> None:
    from batchml.data.ingest import ingest

    classes = args.classes.split(",") if args.classes is not None else None
    r = ingest(open_store(args), args.source, args.dataset, args.split, args.partition_size, classes,
               verbose=not args.quiet)
    state = f"{r.written} written" if r.written else "already ingested, nothing changed"
    print(f"dataset {r.dataset}: {r.rows:,} images in {r.partitions} partitions ({state}) at {r.url}")


def cmd_train(args) -> None:
    from batchml.cluster import connect
    from batchml.device import device_label
    from batchml.registry import promote
    from batchml.train.training import train

    store, cfg = open_store(args), train_config(args)
    with connect(cluster_config(args), verbose=not args.quiet) as client:
        mv, card = train(client, store, cfg, verbose=not args.quiet)
    test = f", test accuracy {card.test_accuracy:.4f}" if card.test_accuracy is not None else ""
    print(f"registered {mv}: validation accuracy {card.metrics.validation.accuracy:.4f}{test}, "
          f"{card.training_seconds:.0f}s on {device_label(card.device)}; "
          f"{card.fit.verdict} ({card.fit.reason}); "
          f"{store.url(mv.prefix)}")
    if args.promote:
        promote(store, mv, args.promote)
        print(f"{args.promote} -> {mv}")


def cmd_models_list(args) -> None:
    from batchml.registry import list_registered

    store = open_store(args)
    listed = list_registered(store, include_damaged=True)
    if not listed:
        say(f"no models in {store.url()}")
    for r in listed:
        if r.problem:  # one version's damage must not hide the others
            say(f"{r.version.name}/{r.version.version:<5} DAMAGED: {r.problem} (`batchml doctor` lists what "
                "depends on it)")
            continue
        test = r.card.test_accuracy
        say(f"{r.version.name}/{r.version.version:<5} {r.card.arch or '-':<10} {r.card.created_at or '-'}  test "
            f"accuracy {'-' if test is None else f'{test:.4f}'}  {','.join(r.aliases)}")


def cmd_models_show(args) -> None:
    from batchml.registry import read_card

    store = open_store(args)
    card = read_card(store, resolve(store, args.version))
    if isinstance(card.validation_rows, dict):  # per-row data for monitoring, not for reading
        card.validation_rows = {k: (f"<{len(v):,} characters>" if isinstance(v, str) and len(v) > 200 else v)
                                for k, v in card.validation_rows.items()}
    print(json.dumps(card.to_dict(), indent=1))


def cmd_models_promote(args) -> None:
    from batchml.registry import promote

    store = open_store(args)
    mv = resolve(store, args.version)
    promote(store, mv, args.alias)
    print(f"{args.alias} -> {mv}")


def cmd_score(args) -> None:
    from batchml.cluster import connect
    from batchml.device import device_label
    from batchml.score.scoring import ScoreConfig, score

    store = open_store(args)
    cfg = ScoreConfig(dataset=args.dataset, model=args.model, run_id=args.run_id, batch_size=args.batch_size,
                      max_error_ratio=args.max_error_ratio, images=args.images, partition_size=args.partition_size,
                      segment_by=args.segment_by, segment_from_path=args.segment_from_path,
                      raw_orientation=args.raw_orientation, diagnostics=args.diagnostics,
                      append=args.append)
    with connect(cluster_config(args), verbose=not args.quiet) as client:
        m = score(client, store, cfg, verbose=not args.quiet)
    rate = f" at {m.images_per_second:,.0f} images/s" if m.images_per_second else ""
    rate += f" on {', '.join(device_label(d) for d in m.devices)}" if m.devices else ""
    print(f"run {m.run_id} committed: {m.rows:,} predictions, {m.errors} errors, "
          f"model {m.model_version}{rate}; {store.url(layout.run_path(m.run_id))}")


def cmd_monitor(args) -> int:
    from batchml.monitoring import (
        MonitorConfig,
        accept_baseline,
        format_range,
        format_report,
        monitor_range,
        monitor_run,
    )
    from batchml.notify import Night

    if args.note is not None and not args.accept_baseline:
        raise BatchmlError("--note goes with --accept-baseline RUN_ID (it says why the mix was accepted)")
    if not (args.run_id or args.accept_baseline or args.since or args.until):
        raise BatchmlError("pass --run-id ID, --since/--until dates to summarise a range of runs, "
                           "or --accept-baseline ID")
    store = open_store(args)
    if args.accept_baseline:
        r = accept_baseline(store, args.accept_baseline, args.note)
        say(f"accepted the class mix of run {r.run_id} as the baseline of {r.model_version} "
            f"(recorded at {layout.accepted_path(r.run_id)})")
        if not args.run_id:
            return 0
    if not args.run_id:
        since, until = iso_date("--since", args.since), iso_date("--until", args.until)
        if since and until and since > until:
            raise BatchmlError(f"--since {since} is after --until {until}: the range is reversed; swap them")
        model = str(resolve(store, args.model)) if args.model else None
        say(format_range(monitor_range(store, since, until, model)))
        return 0
    started = time.monotonic()
    try:
        cfg = MonitorConfig.from_file(args.config) if args.config else MonitorConfig()
        report = monitor_run(store, args.run_id, cfg, args.config)
    except BatchmlError as exc:
        send_night(args, Night.failed(args.run_id, str(exc), time.monotonic() - started, args.dashboard_url))
        raise
    say(format_report(report))
    send_night(args, Night.of_report(report, time.monotonic() - started, args.dashboard_url))
    return 1 if report.failed else 0


def cmd_report(args) -> None:
    from batchml.report import render

    store = open_store(args)
    page = render(store, args.run_id, args.dashboard_url)
    try:
        Path(args.out).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise BatchmlError(f"cannot write --out {args.out}: {exc.strerror}: choose a writable path") from None
    say(f"report of run {args.run_id}: {args.out} ({len(page):,} bytes, self-contained)")


def cmd_doctor(args) -> int:
    from batchml.cluster import connect
    from batchml.doctor import check_store, lines, repair

    store = open_store(args)
    checkup = check_store(store)
    for line in lines(store, checkup):
        say(line)
    if checkup.whole or not args.repair:
        return 0 if checkup.whole else 1
    failed = repair(store, checkup, lambda: connect(cluster_config(args), verbose=not args.quiet),
                    verbose=not args.quiet)
    for line in failed:
        say(f"not repaired: {line}")
    after = check_store(store)
    say(f"doctor: after the repair, {'the store is whole' if after.whole else f'{len(after.findings)} damaged'}")
    return 0 if after.whole else 1


def cmd_dashboard(args) -> None:
    from batchml.serve.dashboard import exposure_warning, serve

    store = open_store(args)
    warning = exposure_warning(args.address, args.basic_auth)
    if warning:
        print(f"batchml: warning: {warning}", file=sys.stderr, flush=True)
    print(f"dashboard of {store.url()} on http://{args.address}:{args.port}/", flush=True)
    serve(store, port=args.port, address=args.address, refresh_seconds=args.refresh, basic_auth=args.basic_auth,
          cookie_secret=args.cookie_secret, allow_origins=args.allow_websocket_origin,
          trusted_proxies=args.trusted_proxy)


def cmd_demo(args) -> None:
    from batchml.demo import run_demo

    run_demo(open_store(args), cluster_config(args),
             DemoConfig(source=args.source or cifar10_source(), epochs=args.epochs, night_size=args.night_size))


if __name__ == "__main__":
    sys.exit(main())
