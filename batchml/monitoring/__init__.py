"""Committed runs in: their manifests, mergeable partition statistics and failure candidates, and
their model's card. Monitoring tables out: one row per run, its alerts and failure-case snapshot."""

from batchml.monitoring.run_monitor import (
    MonitorConfig,
    RunReport,
    accept_baseline,
    fold_run,
    format_range,
    format_report,
    monitor_range,
    monitor_run,
)
from batchml.monitoring.tables import read_table

__all__ = [
    "MonitorConfig",
    "RunReport",
    "accept_baseline",
    "fold_run",
    "format_range",
    "format_report",
    "monitor_range",
    "monitor_run",
    "read_table",
]
