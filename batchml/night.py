"""One night's work, as the nightly job and the demo both do it: score a run (resuming it where an
earlier attempt stopped), then monitor it."""

from __future__ import annotations

from batchml.monitoring import MonitorConfig, RunReport, monitor_run
from batchml.records import RunManifest
from batchml.score.scoring import ScoreConfig, score
from batchml.store import Store


def score_and_monitor(client, store: Store, cfg: ScoreConfig, thresholds: MonitorConfig = MonitorConfig(),
                      config_source: str | None = None, verbose: bool = True) -> tuple[RunManifest, RunReport]:
    """The committed run's manifest and its monitoring report (``config_source``: the file the
    thresholds came from, named in the report)."""
    manifest = score(client, store, cfg, verbose=verbose)
    return manifest, monitor_run(store, manifest.run_id, thresholds, config_source)
