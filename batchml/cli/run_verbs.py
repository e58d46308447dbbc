"""The verbs of the nights: score a run, monitor it, report it, check the store (doctor), serve the
dashboard, and the demo of the whole flow."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from batchml import layout
from batchml.cli.args import cifar10_source, cluster_config, iso_date, open_store, send_night
from batchml.cli.output import say
from batchml.demo import DemoConfig
from batchml.errors import BatchmlError
from batchml.registry import resolve
from batchml.store import absolute


def cmd_score(args) -> None:
    from batchml.cluster import check_cluster, connect
    from batchml.device import device_label
    from batchml.score.scoring import ScoreConfig, score_unless_committed

    store = open_store(args)
    cfg = ScoreConfig(dataset=args.dataset, model=args.model, run_id=args.run_id, batch_size=args.batch_size,
                      max_error_ratio=args.max_error_ratio, images=args.images and absolute(args.images),
                      partition_size=args.partition_size,
                      segment_by=args.segment_by, segment_from_path=args.segment_from_path,
                      raw_orientation=args.raw_orientation, diagnostics=args.diagnostics,
                      append=args.append)
    cluster = cluster_config(args)
    check_cluster(cluster)  # flags at odds are named before the input is looked at
    m = score_unless_committed(lambda: connect(cluster, verbose=not args.quiet), store, cfg, verbose=not args.quiet)
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
        segment_report,
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
    if args.segment is not None and not args.run_id:
        raise BatchmlError("--segment goes with --run-id ID (a segment of one monitored run)")
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
    say(format_report(segment_report(report, args.segment) if args.segment is not None else report))
    send_night(args, Night.of_report(report, time.monotonic() - started, args.dashboard_url))
    return 1 if report.failed else 0


def cmd_report(args) -> int:
    from batchml.report import alerts_unknown, render

    store = open_store(args)
    page = render(store, args.run_id, args.dashboard_url)
    try:
        Path(args.out).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise BatchmlError(f"cannot write --out {args.out}: {exc.strerror}: choose a writable path") from None
    say(f"report of run {args.run_id}: {args.out} ({len(page):,} bytes, self-contained)")
    if alerts_unknown(store, args.run_id):
        print(f"batchml: error: the alerts of run {args.run_id} are unknown (their file is missing or damaged); "
              "the report says so: run `batchml doctor --repair`, then the report again", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args) -> int:
    from batchml.cluster import connect
    from batchml.doctor import check_store, lines
    from batchml.repair import repair

    store = open_store(args)
    checkup = check_store(store)
    if not checkup.checked and not checkup.unfinished:  # a mistyped --root must not pass a health check
        raise BatchmlError(f"{store.url()} holds no batchml store (no runs, models or datasets): check --root "
                           "(and --storage-options)")
    for line in lines(store, checkup):
        say(line)
    if checkup.whole or not args.repair:
        return 0 if checkup.whole else 1
    failed = repair(store, checkup, lambda: connect(cluster_config(args), verbose=not args.quiet),
                    verbose=not args.quiet)
    for line in failed:
        say(f"not repaired: {line}")
    after = check_store(store)
    state = "the store is whole" if after.whole else f"{len(after.findings)} damaged"
    say(f"doctor: after the repair, {state}" + (f"; {len(failed)} thing(s) not repaired (above)" if failed else ""))
    return 0 if after.whole and not failed else 1


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
