"""Committed runs in: monitoring is fed only by their mergeable partition statistics and manifests.
Monitoring tables out: one row per run, its alerts and failure-case snapshot (``batchml.layout``)."""

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
