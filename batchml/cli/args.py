"""The arguments the verbs and the jobs share, their types, and the values they become: a store,
a cluster's configuration, a ``TrainConfig``, the night's notifications."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

from batchml.backend import BACKENDS, DEFAULT_BACKEND, configure_backend
from batchml.data.datasets import DEFAULT_PARTITION_SIZE
from batchml.errors import BatchmlError
from batchml.registry import DEFAULT_ALIAS
from batchml.store import DEFAULT_ROOT, Store, StoreConfig, absolute
from batchml.train.recipes import RECIPES, SETTINGS, recipe_defaults, setting_type


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

    checkout = Path(__file__).resolve().parents[2]
    return find_source(base.parent / "shared" / "data" for base in (Path.cwd(), checkout))


def iso_date(flag: str, text: str | None) -> str | None:
    """A ``YYYY-MM-DD`` flag value, or a clear error (a word like 'yesterday' would match nothing)."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise BatchmlError(f"{flag} {text!r} is not a date: use YYYY-MM-DD, e.g. {flag} 2026-11-01") from None


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
    cluster.add_argument("--threads-per-worker", type=positive, default=2,
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
    seg = scoring.add_mutually_exclusive_group()
    seg.add_argument("--segment-by", metavar="COLUMN",
                     help="keep statistics per value of this carried column (e.g. camera): the top 20 values "
                          "of each partition and '(other)'; alerts name the segment that moved")
    seg.add_argument("--segment-from-path", metavar="PATTERN",
                     help="with --images: the part of each file's path that names its segment, e.g. "
                          "'{camera}/**' (the first folder) or '**/{site}/*'; class folders keep giving labels")
    scoring.add_argument("--raw-orientation", action="store_true",
                         help="score pixels as stored, without turning photos by their EXIF orientation")
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
    return Store(StoreConfig(absolute(args.root), options))


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
