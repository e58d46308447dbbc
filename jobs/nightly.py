"""Nightly scoring job: score a dataset with the production model, monitor the run, and
exit non-zero on failure or on an alert of severity error (for cron, Airflow, Argo...).

    python jobs/nightly.py --dataset night-2026-11-26 --root s3://bucket/batchml \\
        [--scheduler tcp://scheduler:8786] [--run-id ID]

Rerunning the same command resumes an interrupted run (the run id defaults to
``nightly-<dataset>``), so a retry after a crash never duplicates or loses a row.
"""

from __future__ import annotations

import argparse
import sys

from batchml.cli import cluster_arguments, cluster_config, open_store, store_arguments
from batchml.cluster import connect
from batchml.errors import BatchmlError
from batchml.monitoring import format_report, monitor_run
from batchml.scoring import ScoreConfig, score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[store_arguments(), cluster_arguments()])
    parser.add_argument("--dataset", required=True, help="the night's input partitions (batchml ingest)")
    parser.add_argument("--model", default="production")
    parser.add_argument("--run-id", help="default nightly-<dataset>")
    parser.add_argument("--max-error-ratio", type=float, default=0.01)
    args = parser.parse_args(argv)
    try:
        store = open_store(args)
        cfg = ScoreConfig(args.dataset, args.model, args.run_id or f"nightly-{args.dataset}",
                          max_error_ratio=args.max_error_ratio)
        with connect(cluster_config(args)) as client:
            manifest = score(client, store, cfg, verbose=not args.quiet)
        report = monitor_run(store, manifest["run_id"])
    except BatchmlError as exc:
        print(f"nightly: FAILED: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
