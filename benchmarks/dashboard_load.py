"""Dashboard load time with a year of nightly history.

    python benchmarks/dashboard_load.py [--nights 365] [--loads 7]

Writes 365 monitored nightly runs (10 classes, 2,000 images each, the class mix and
accuracy wandering as real nights do, some alerts) into a fresh store with the same
`evaluate` code that `batchml monitor` runs, serves it with `batchml
dashboard`, and times, in headless Chromium, from the request to the overview fully
rendered (the latest run's accuracy shown). The first load reads the whole history;
later loads reuse the server's cache. The last line is one JSON object with
`overview_seconds` (the median over all loads) and `overview_seconds_cold` (the first).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from batchml.monitoring import MonitorConfig, evaluate
from batchml.monitoring.baseline import baseline_from_rows
from batchml.monitoring.tables import write_alerts, write_run_row
from batchml.records import ModelCard, RunManifest
from batchml.stats import PartitionStats
from batchml.store import Store, StoreConfig

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_card(rng) -> ModelCard:
    joint = np.diag(np.full(10, 350.0)) + rng.uniform(0, 17, (10, 10))
    return ModelCard.from_dict({"reference": {"accuracy": 0.72, "predicted_counts": [1000] * 10},
                                "metrics": {"validation": {"prob_confusion": joint.tolist()}}})


def write_history(store: Store, nights: int, seed: int = 0) -> dict:  # the last night's row
    rng = np.random.default_rng(seed)
    card, rows = synthetic_card(rng), []
    start = datetime.now(UTC) - timedelta(days=nights)
    for night in range(nights):
        prior = rng.dirichlet(np.full(10, 200.0))
        labels = rng.choice(10, 2000, p=prior)
        probs = rng.dirichlet(np.full(10, 0.3), 2000)
        hit = rng.random(2000) < 0.72 - 0.1 * (night > nights - 20)  # a late drop in accuracy
        probs[hit, labels[hit]] += 2.0  # confident when right...
        wrong = (labels[~hit] + rng.integers(1, 10, (~hit).sum())) % 10
        probs[~hit, wrong] += 1.0  # ...less so when wrong: roughly calibrated, as a real model
        probs /= probs.sum(axis=1, keepdims=True)
        stats = PartitionStats.from_predictions(probs.astype(np.float32), labels, temperature=1.1)
        run = RunManifest.from_dict({
            "run_id": f"nightly-{night:03d}", "dataset": f"night-{night:03d}", "model_version": "cifar10/v1",
            "committed_at": (start + timedelta(days=night)).isoformat(timespec="milliseconds"),
            "classes": CLASSES, "max_error_ratio": 0.01})
        report = evaluate(run, stats, card, baseline_from_rows(rows), MonitorConfig())
        write_run_row(store, report.row)  # as monitor_run does: alerted nights leave the baseline
        write_alerts(store, run.run_id, report.alerts)
        rows.append(report.row.to_dict())
    return rows[-1]


def time_loads(url: str, expected: str, loads: int, shots: str | None = None) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    seconds = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        for _ in range(loads):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            started = time.perf_counter()
            page.goto(url)
            page.locator(".bm-accuracy", has_text=expected).first.wait_for(timeout=60_000)
            seconds.append(time.perf_counter() - started)
            if shots and len(seconds) == loads:  # pictures for the README, after the timing
                for tab in ("Overview", "Accuracy", "Class mix", "Confusion (range)"):
                    page.locator(".bk-tab").filter(has_text=re.compile(f"^{re.escape(tab)}$")).first.click()
                    time.sleep(2)
                    name = tab.lower().replace(" ", "-").replace("(", "").replace(")", "")
                    page.screenshot(path=f"{shots}/dashboard-{name}.png")
            page.close()
        browser.close()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--screenshots", help="folder for screenshots of some views, taken after the timing")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="batchml-dash-")
    store = Store(StoreConfig(root))
    t = time.perf_counter()
    latest = write_history(store, args.nights)
    print(f"wrote {args.nights} monitored nights to {root} in {time.perf_counter() - t:.1f}s")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "batchml", "dashboard", "--root", root, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        seconds = time_loads(f"http://127.0.0.1:{port}/", f"{latest['accuracy']:.2%}", args.loads, args.screenshots)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    figures = {"overview_seconds": statistics.median(seconds), "overview_seconds_cold": seconds[0],
               "overview_seconds_all": [round(s, 3) for s in seconds], "nights": args.nights}
    print(f"overview fully rendered with {args.nights} nights of history: median {figures['overview_seconds']:.2f}s "
          f"over {args.loads} loads, first (cold) load {seconds[0]:.2f}s (target < 2 s)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
