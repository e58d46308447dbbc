"""The chaos benchmark in a small round, so that it never rots (benchmarks/chaos.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHAOS = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"


def test_a_small_chaos_round_loses_duplicates_and_wedges_nothing():
    proc = subprocess.run([sys.executable, str(CHAOS), "--rounds", "1", "--images", "150", "--timeout", "300"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 1 and summary["rows_expected"] == 155, summary  # and 5 files appended late
    bad = ("rows_lost", "rows_duplicated", "runs_wedged", "wrong_exit_codes", "silent_skips")
    assert {k: summary[k] for k in bad} == dict.fromkeys(bad, 0), summary
    assert summary["damaged_named"] == summary["damaged_planted"] > 0
