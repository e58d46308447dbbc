"""What was scored: nothing, too many undecodable images, or far fewer images than the recent nights."""

from __future__ import annotations

import numpy as np

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


VOLUME_NIGHTS = 5  # recent clean nights a night's (or a segment's) size is compared with, at least


def volume_drop(row: MonitoringRow, cfg: MonitorConfig, sizes: list[int], where: str = "") -> Alert | None:
    """Warning: tonight (``where``: a segment) holds fewer images than ``volume_min_ratio`` of the smallest
    of its recent clean nights' ``sizes``: images not arrived yet, or a source that stopped sending.
    Nights vary; the smallest of at least ``VOLUME_NIGHTS`` keeps ordinary ones quiet."""
    tonight = row.rows + row.errors
    if len(sizes) < VOLUME_NIGHTS or (not tonight and not where) or min(sizes) <= 0:
        return None  # an empty night is ``no_rows``'s
    smallest = min(sizes)
    if tonight >= cfg.volume_min_ratio * smallest:
        return None
    what = f"{where}: " if where else ""
    return alert(row, "volume_drop", "warning", tonight / smallest, cfg.volume_min_ratio,
                 f"{what}{tonight:,} images tonight, against {smallest:,} to {max(sizes):,} (median "
                 f"{int(np.median(sizes)):,}) on each of the last {len(sizes)} clean nights: images not arrived yet, "
                 f"or a source that stopped sending. Check the feed{' of ' + where if where else ''}; when the rest "
                 f"arrive, score them into this night (`batchml score --images PREFIX --run-id {row.run_id} "
                 "--append`), then monitor it again")
