"""What was scored: nothing, or too many undecodable images."""

from __future__ import annotations

from batchml.monitoring.rules.base import alert
from batchml.monitoring.rules.config import MonitorConfig
from batchml.records import Alert, MonitoringRow


def no_rows(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Error: not one image was scored (all undecodable, even where the run allowed that): there
    is nothing to monitor, and no news is not good news."""
    if row.rows == 0:
        return alert(row, "no_rows", "error", 0, 1, f"no image was scored ({row.errors} undecodable)")
    return None


def error_ratio(row: MonitoringRow, cfg: MonitorConfig) -> Alert | None:
    """Error: more undecodable images than the run allowed (its ``--max-error-ratio``)."""
    allowed = row.max_error_ratio if row.max_error_ratio is not None else 1.0
    if row.error_ratio > allowed:
        return alert(row, "error_ratio", "error", row.error_ratio, allowed,
                      f"{row.errors} undecodable images ({row.error_ratio:.2%})")
    return None
