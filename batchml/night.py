"""One night's work, as the nightly job and the demo both do it: score a run (resuming it where an
earlier attempt stopped), then monitor it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from batchml.monitoring import MonitorConfig, RunReport, monitor_run
from batchml.records import RunManifest
from batchml.score.scoring import ScoreConfig, score_unless_committed
from batchml.store import Store


def score_and_monitor(open_client: Callable[[], AbstractContextManager], store: Store, cfg: ScoreConfig,
                      thresholds: MonitorConfig = MonitorConfig(), config_source: str | None = None,
                      verbose: bool = True) -> tuple[RunManifest, RunReport]:
    """The committed run's manifest and its monitoring report (``config_source``: the file the
    thresholds came from, named in the report). ``open_client`` gives a Dask client, opened only
    when there is scoring to do: a night committed already is monitored at once."""
    manifest = score_unless_committed(open_client, store, cfg, verbose)
    return manifest, monitor_run(store, manifest.run_id, thresholds, config_source)
