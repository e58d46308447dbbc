"""Nightly scoring job: score the day's new partitions with the production model, monitor
the run, and exit non-zero on failure or on an alert of severity error (for cron, Airflow,
Argo...). Exit codes: 0 all well, 1 an error alert, 2 the job failed.

    # the day's ingested dataset (one dataset per night)
    python jobs/nightly.py --dataset 'night-{date}' --root s3://bucket/batchml
    # or the day's raw JPEG/PNG files, scored without an ingest step
    python jobs/nightly.py --images 's3://bucket/incoming/{date}/' --root s3://bucket/batchml
        [--date 2026-11-26] [--scheduler tcp://scheduler:8786] [--run-id ID] [--partition-size N] [--append]
        [--notify https://hooks.slack.com/... --notify-format slack] [--metrics-file PATH]

``{date}`` is the night's date (``--date``, default today in UTC). Rerunning the same
command resumes an interrupted run (the run id defaults to ``nightly-<dataset>`` or
``nightly-images-<date>``), so a retry after a crash never duplicates or loses a row. Files
that arrive after the night's run committed are refused with their names; ``--append`` scores
them into the same run, then monitors it again. ``--notify`` and ``--metrics-file`` send the
night's report (and a failure) to people and to Prometheus; they never change the exit code.
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from datetime import UTC, datetime

from batchml.cli import (
    cluster_arguments,
    cluster_config,
    disk_full,
    exit_now,
    iso_date,
    notify_arguments,
    open_store,
    scoring_arguments,
    send_night,
    store_arguments,
    unexpected,
)
from batchml.cluster import check_cluster, connect
from batchml.errors import BatchmlError
from batchml.monitoring import MonitorConfig, format_report
from batchml.night import score_and_monitor
from batchml.notify import Night
from batchml.score.scoring import ScoreConfig
from batchml.store import absolute


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[store_arguments(), cluster_arguments(), scoring_arguments(),
                                              notify_arguments()])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="the night's ingested dataset; {date} is replaced")
    source.add_argument("--images", help="the night's prefix of raw JPEG/PNG files (folder or s3://); "
                        "{date} is replaced")
    parser.add_argument("--date", default=datetime.now(UTC).date().isoformat(),
                        help="the night to score, YYYY-MM-DD (default today, UTC)")
    parser.add_argument("--run-id", help="default nightly-<dataset>, or nightly-images-<date>")
    parser.add_argument("--config", metavar="FILE", help="alert thresholds from a TOML file (see the README)")
    return parser


def score_config(args) -> ScoreConfig:
    """The night's run: ``{date}`` replaced in --dataset or --images, and the run id that a retry resumes."""
    night = iso_date("--date", args.date)
    dataset = args.dataset.replace("{date}", night) if args.dataset else None
    images = absolute(args.images.replace("{date}", night)) if args.images else None
    run_id = args.run_id or (f"nightly-{dataset}" if dataset else f"nightly-images-{night}")
    return ScoreConfig(dataset, args.model, run_id, batch_size=args.batch_size, max_error_ratio=args.max_error_ratio,
                       images=images, partition_size=args.partition_size, append=args.append,
                       segment_by=args.segment_by, segment_from_path=args.segment_from_path,
                       raw_orientation=args.raw_orientation)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, run_id = time.monotonic(), args.run_id
    try:
        cfg = score_config(args)
        run_id = cfg.run_id  # a failure from here on is reported as this run's
        store = open_store(args)
        thresholds = MonitorConfig.from_file(args.config) if args.config else MonitorConfig()
        cluster = cluster_config(args)
        check_cluster(cluster)
        _, report = score_and_monitor(lambda: connect(cluster, verbose=not args.quiet), store, cfg,
                                      thresholds, args.config, verbose=not args.quiet)
    except BatchmlError as exc:
        print(f"nightly: FAILED: {exc}", file=sys.stderr)
        send_night(args, Night.failed(run_id, str(exc), time.monotonic() - started, args.dashboard_url))
        return 2
    except Exception as exc:  # a crash is a failure (2), never mistaken for an alert (1)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(disk_full("nightly: FAILED", exc), file=sys.stderr)
            code = 2
        else:
            code = unexpected("nightly: FAILED")
        send_night(args, Night.failed(run_id, f"unexpected {type(exc).__name__}: {exc}",
                                      time.monotonic() - started, args.dashboard_url))
        return code
    print(format_report(report))
    send_night(args, Night.of_report(report, time.monotonic() - started, args.dashboard_url))
    return 1 if report.failed else 0


if __name__ == "__main__":
    exit_now(main())
