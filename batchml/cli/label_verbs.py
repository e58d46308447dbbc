"""``batchml labels add``: labels that arrive after the night, added to scored runs (``batchml.labels``)."""

from __future__ import annotations

import argparse

from batchml.cli.args import iso_date, open_store
from batchml.cli.output import say
from batchml.errors import BatchmlError
from batchml.records import SAMPLINGS


def add_label_verbs(verbs, store: argparse.ArgumentParser) -> None:
    """The ``labels`` verb and its ``add``."""
    p = verbs.add_parser("labels", help="labels that arrive after the night: add them to scored runs")
    lverbs = p.add_subparsers(dest="labels_verb", required=True)
    q = lverbs.add_parser("add", parents=[store], help="check a labels file and store it as a batch of each run")
    q.add_argument("file", metavar="FILE", help="Parquet or CSV: image_id, label (class name or index), "
                   "optionally labelled_at and source")
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the committed run the images were scored in")
    which.add_argument("--since", help="or match ids across the runs committed from this date (YYYY-MM-DD)")
    q.add_argument("--until", help="with --since: ... to this date, inclusive")
    q.add_argument("--sampling", choices=SAMPLINGS, default="random",
                   help="how the labelled images were chosen: random (default), uncertain (least confident "
                   "first: reweighted by confidence bin), other (reported as not representative)")
    q.add_argument("--replace", action="store_true",
                   help="let these labels replace different ones given at ingest or by an earlier batch")
    q.set_defaults(func=cmd_labels_add)


def cmd_labels_add(args) -> None:
    from batchml.labels import add_labels

    if args.until and not args.since:
        raise BatchmlError("--until goes with --since (a range of runs); for one run pass --run-id")
    since, until = iso_date("--since", args.since), iso_date("--until", args.until)
    store = open_store(args)
    added = add_labels(store, args.file, [args.run_id] if args.run_id else None, since, until,
                       args.sampling, args.replace)
    for a in added:
        if a.already_added:
            say(f"run {a.run_id}: batch {a.batch.batch_id} was added before ({a.batch.created_at}): nothing written")
        elif a.rows == 0:
            say(f"run {a.run_id}: none of the file's images were scored in this run: nothing written")
        elif a.batch is None:
            say(f"run {a.run_id}: {a.rows} row(s) matched, every label already known: nothing written")
        else:
            say(f"run {a.run_id}: batch {a.batch.batch_id} ({a.new} new, {a.replaced} replaced, {a.unchanged} "
                f"already known); run `batchml monitor --run-id {a.run_id}` to judge the night with them")
