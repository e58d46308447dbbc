"""A screenshot of the dashboard on a store, taken in headless Chromium (Debian's, through
Playwright), as the README's is:

    python dashboards/screenshot.py --root ./batchml-store --out docs/dashboard-demo.png [--tab "Class mix"]

It serves ``batchml dashboard`` on a free loopback port, opens it, waits for the overview
(and clicks ``--tab``), saves the page as PNG and stops the server.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import time

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the dashboard did not start on port {port} within {seconds:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the store, as for every batchml verb")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--tab", default="Overview", help="the tab to show (default %(default)s)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "batchml", "dashboard", "--root", args.root, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator(".bm-accuracy").first.wait_for(timeout=60_000)
            if args.tab != "Overview":
                page.locator(".bk-tab").filter(has_text=re.compile(f"^{re.escape(args.tab)}$")).first.click()
            page.wait_for_timeout(2000)  # plots draw after their data arrives
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"screenshot of {args.root} ({args.tab}) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
