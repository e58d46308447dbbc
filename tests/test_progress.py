"""Progress on stderr: a bar with an ETA on a terminal, plain lines with an ETA elsewhere,
nothing with -q; and workers' framework start-up chatter kept out of the output."""

from __future__ import annotations

import io
import subprocess
import sys

from batchml.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_carry_the_rate_and_an_eta_where_stderr_is_no_terminal(monkeypatch):
    stream = io.StringIO()
    clock = iter([0.0, 10.0, 10.0, 20.0, 20.0])
    monkeypatch.setattr("batchml.progress.time.monotonic", lambda: next(clock))
    p = Progress("score night", total=5, unit="partitions", stream=stream, done=1)
    p.update(2, "2,000 rows")
    assert stream.getvalue() == "score night: 3/5 partitions (0.20/s, ETA 10s) 2,000 rows\n"  # resumed: 1 before


def test_a_terminal_gets_a_tqdm_bar_with_an_eta():
    stream = Terminal()
    p = Progress("train cifar10", total=4, unit="epochs", stream=stream)
    p.update(1, "loss 1.2")
    p.update(3, "loss 0.5")
    out = stream.getvalue()
    assert "train cifar10" in out and "4/4" in out and "loss 0.5" in out and "100%|" in out


def test_quiet_prints_nothing():
    for stream in (io.StringIO(), Terminal()):
        p = Progress("ingest d", total=3, unit="images", stream=stream, enabled=False)
        p.update(3)
        p.say("done")
        p.close()
        assert stream.getvalue() == ""


def test_framework_start_up_chatter_is_filtered_and_real_warnings_kept():
    code = ("import os, sys\n"
            "from batchml.backend import configure_backend, filtered_stderr, import_keras\n"
            "configure_backend('tensorflow')\n"
            "import_keras()\n"
            "with filtered_stderr():\n"
            "    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\n')\n"
            "    os.write(2, b'W real trouble: disk almost full\\n')\n"
            "    print('python warning', file=sys.stderr)\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stderr
    assert "oneDNN" not in err and "absl::InitializeLog" not in err
    assert "W real trouble: disk almost full" in err and "python warning" in err
