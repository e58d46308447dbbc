"""Committed runs in: their manifests, mergeable partition statistics and failure candidates, and
their model's card. Monitoring tables out: one row per run, its alerts and failure-case snapshot.

One module per job: ``row`` (statistics folded into a ``MonitoringRow``), ``rules`` (one function
per alert kind beside its thresholds), ``baseline`` (earlier nights, the accepted run, the CUSUM),
``report`` (text), ``monitor`` (the order they run in); beside them the statistics each rule
reads: ``shift``, ``history``, ``sequential``, ``label_free``, ``label_shift``, ``classes``.
"""

from batchml.monitoring.baseline import accept_baseline
from batchml.monitoring.monitor import evaluate, monitor_range, monitor_run
from batchml.monitoring.report import RunReport, format_range, format_report, segment_report
from batchml.monitoring.row import fold_run
from batchml.monitoring.rules import MonitorConfig
from batchml.monitoring.tables import read_table

__all__ = [
    "MonitorConfig",
    "RunReport",
    "accept_baseline",
    "evaluate",
    "fold_run",
    "format_range",
    "format_report",
    "monitor_range",
    "monitor_run",
    "read_table",
    "segment_report",
]
