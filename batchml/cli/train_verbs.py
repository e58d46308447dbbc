"""The verbs before the nights: ingest images, train and sweep models, list, show and promote them."""

from __future__ import annotations

import json

from batchml import layout
from batchml.cli.args import cluster_config, open_store, train_config
from batchml.cli.output import say
from batchml.registry import resolve


def cmd_sweep(args) -> None:
    from batchml.cluster import connect
    from batchml.registry import ModelVersion
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
    _promote_if_asked(store, args, ModelVersion.parse(result.registered))


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
    from batchml.train.training import train

    store, cfg = open_store(args), train_config(args)
    with connect(cluster_config(args), verbose=not args.quiet) as client:
        mv, card = train(client, store, cfg, verbose=not args.quiet)
    test = f", test accuracy {card.test_accuracy:.4f}" if card.test_accuracy is not None else ""
    print(f"registered {mv}: validation accuracy {card.metrics.validation.accuracy:.4f}{test}, "
          f"{card.training_seconds:.0f}s on {device_label(card.device)}; "
          f"{card.fit.verdict} ({card.fit.reason}); "
          f"{store.url(mv.prefix)}")
    _promote_if_asked(store, args, mv)


def _promote_if_asked(store, args, mv) -> None:
    """``--promote ALIAS``: point the alias at the version just registered."""
    from batchml.registry import promote

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
