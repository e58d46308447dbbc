"""What every rule shares: its signature and how it words an alert."""

from __future__ import annotations

from collections.abc import Callable

from batchml.monitoring.rules.config import MonitorConfig
from batchml.records import Alert, MonitoringRow

Rule = Callable[[MonitoringRow, MonitorConfig], Alert | None]


def alert(row: MonitoringRow, kind: str, severity: str, statistic: float, threshold: float, message: str) -> Alert:
    return Alert.written({"run_id": row.run_id, "kind": kind, "severity": severity, "statistic": float(statistic),
                          "threshold": float(threshold), "message": message})
