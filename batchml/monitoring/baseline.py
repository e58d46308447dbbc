"""What earlier nights tell tonight: the recent clean nights, the accepted run, the CUSUM sums.

The baseline of a run is built from the model's earlier monitoring rows (``history``). A run
accepted with ``batchml monitor --accept-baseline`` restarts it: from the accepted run on,
``sustained_shift`` compares with its mix, COT expects its true mix, and the nightly history and
the CUSUM start again there. The latest acceptance of a model wins, so a user can go back to an
older run's mix by accepting it again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np

from batchml import layout
from batchml.errors import BatchmlError
from batchml.monitoring import sequential
from batchml.monitoring.history import MIN_NIGHTS, baseline_mix, dispersion
from batchml.monitoring.tables import TableReader, read_table
from batchml.records import AcceptedBaseline, MonitoringRow, RunManifest, is_absent
from batchml.stats import PartitionStats
from batchml.store import Store


@dataclass
class Baseline:
    """What earlier nights tell tonight's monitoring (see ``baseline_from_rows``)."""

    history: list[np.ndarray] = field(default_factory=list)  # predicted counts of clean nights, oldest first
    cusum: np.ndarray | None = None  # (2, K) last night's sums; None: start from zero
    accepted: AcceptedBaseline | None = None  # the accepted run in force, if any
    # MLLS estimates of the clean nights since the accepted run: COT's expected mix averages them with
    # the accepted run's, steadier than that alone
    mixes: list[np.ndarray] = field(default_factory=list)
    confusion: np.ndarray | None = None  # (K, K) the clean nights' labelled rows summed; None without any
    sizes: list[int] = field(default_factory=list)  # images (rows and undecodable) of each ``history`` night
    runs: list[str] = field(default_factory=list)  # the run id of each ``history`` night
    # per ``history`` night that was segmented: segment value -> its images (``monitor.history``)
    segment_sizes: list[dict[str, int]] = field(default_factory=list)


def listed(value) -> list:
    """A list column as read back: absent (None, or a table's NaN) reads as empty."""
    return [] if is_absent(value) else list(value)


def baseline_from_rows(rows: list[dict], accepted: AcceptedBaseline | None = None, nights: int = 30) -> Baseline:
    """The baseline of tonight from the model's earlier monitoring rows (dicts, oldest first): the
    last ``nights`` nights that raised no alert (the accepted run counts whatever it raised), and
    the CUSUM sums of the last night, all since the accepted run if there is one."""
    if accepted:
        rows = [r for r in rows if r["committed_at"] >= accepted.committed_at]
    is_accepted = (lambda r: r["run_id"] == accepted.run_id) if accepted else (lambda r: False)
    clean = [r for r in rows if not _breaks_baseline(r) or is_accepted(r)]
    history = [np.asarray(r["predicted_counts"]) for r in clean][-nights:]
    last = [r for r in rows if not is_accepted(r)][-1:]
    mixes = [np.asarray(m, dtype=np.float64) for r in clean[-nights:]
             if accepted and not is_accepted(r) and len(m := listed(r.get("mlls_priors")))]
    confusions = [np.asarray(c, dtype=np.int64) for r in clean[-nights:] if len(c := listed(r.get("confusion")))]
    confusion = np.sum(confusions, axis=0) if confusions else None
    kept = clean[-nights:]
    sizes = [int(np.sum(r["predicted_counts"])) + int(0 if is_absent(r.get("errors")) else r["errors"]) for r in kept]
    return Baseline(history, _cusum_state(last[0]) if last else None, accepted, mixes, confusion, sizes,
                    [r.get("run_id") for r in kept])


def _breaks_baseline(row: dict) -> bool:
    """Whether the night itself raised an alert other than ``error_ratio``: its ``night_alert_kinds``,
    so that label-based alerts raised when labels arrive days later leave the baseline as it was."""
    night = row.get("night_alert_kinds")
    return any(k != "error_ratio" for k in listed(row.get("alert_kinds") if is_absent(night) else night))


def _cusum_state(row: dict) -> np.ndarray | None:
    up, down = listed(row.get("cusum_up")), listed(row.get("cusum_down"))
    return np.asarray([up, down], dtype=np.float64) if len(up) and len(down) else None


def history(store: Store, run: RunManifest, nights: int) -> Baseline:
    """The baseline from the model's runs committed before this one."""
    runs = read_table(store, "runs")
    runs = runs[(runs.model_version == run.model_version) & (runs.run_id != run.run_id)
                & (runs.committed_at <= run.committed_at)]
    rows = runs.sort_values("committed_at").to_dict("records")
    if any(is_absent(r.get("alert_kinds")) for r in rows):
        # rows of the first release lack alert_kinds: their alerts are in the alerts table
        alerted = read_table(store, "alerts")
        kinds = alerted.groupby("run_id")["kind"].apply(list).to_dict()
        rows = [{**r, "alert_kinds": kinds.get(r["run_id"], [])} if is_absent(r.get("alert_kinds")) else r
                for r in rows]
    baseline = baseline_from_rows(rows, accepted_baseline(store, run.model_version, run.committed_at), nights)
    # the history nights' own segment files (30 at most), not the whole table of every night
    reader = TableReader(store, "segments")
    for run_id in baseline.runs:
        if store.exists(layout.monitoring_path("segments", run_id)) and (
                table := reader._read_file(f"{run_id}.parquet")) is not None and table.num_rows:
            rows = table.select(["segment", "rows", "errors"]).to_pylist()
            baseline.segment_sizes.append({str(r["segment"]): int(r["rows"]) + int(r["errors"] or 0) for r in rows})
    return baseline


def with_cusum(row: MonitoringRow, stats: PartitionStats, baseline: Baseline, counted: bool) -> MonitoringRow:
    """The row with tonight's CUSUM sums: last night's, plus tonight's evidence against the clean
    baseline's mix where ``counted`` (tonight raised no single-night alert) and there is a baseline."""
    state = baseline.cusum
    counted = counted and len(baseline.history) >= MIN_NIGHTS and stats.rows > 0
    if counted:
        counts = row.predicted_counts_unique if row.duplicate_within is not None else stats.predicted_counts
        evidence = sequential.night_evidence(np.asarray(counts), baseline_mix(baseline.history),
                                             dispersion(baseline.history))
        state = sequential.cusum_step(state, evidence)
    state = np.zeros((2, len(stats.predicted_counts))) if state is None else np.asarray(state)
    return replace(row, cusum_up=state[0].tolist(), cusum_down=state[1].tolist(), cusum_counted=counted)


# -- the accepted run -------------------------------------------------------------------------------

MIN_ACCEPTED_ROWS = 30  # a smaller run's class mix is mostly noise: it would be every later night's yardstick


def accept_baseline(store: Store, run_id: str, note: str | None = None) -> AcceptedBaseline:
    """Record that a monitored run's class mix is the new normal for its model: from it on,
    ``sustained_shift`` compares with it, COT expects its true mix (its labels' where every row is
    labelled, else its MLLS estimate), and the nightly baseline and CUSUM restart there.
    Accepting a run again makes it the latest acceptance; without ``note`` the earlier note stays."""
    rows = read_table(store, "runs")
    match = rows[rows.run_id == run_id]
    if match.empty:
        raise BatchmlError(f"run {run_id!r} is not monitored yet: run `batchml monitor --run-id {run_id}` first")
    r = match.iloc[0]
    if r.rows < MIN_ACCEPTED_ROWS:
        raise BatchmlError(f"run {run_id!r} scored {r.rows} images: too few to define a class mix (at least "
                           f"{MIN_ACCEPTED_ROWS}; thousands make a steadier baseline): accept a larger run")
    labelled = np.asarray(listed(r.confusion), dtype=np.float64).sum(axis=1) if r.labelled == r.rows else []
    mix = list(labelled / labelled.sum()) if len(labelled) else listed(r.get("mlls_priors"))
    earlier = _read_accepted(store, f"{run_id}.json")
    if note is None:
        note = earlier.note if earlier else ""
    record = AcceptedBaseline.written({
        "run_id": run_id, "model_version": r.model_version, "committed_at": r.committed_at,
        "predicted_counts": [int(c) for c in r.predicted_counts], "estimated_mix": [float(v) for v in mix] or None,
        "note": note, "accepted_at": datetime.now(UTC).isoformat(timespec="microseconds")})
    store.write_json(layout.accepted_path(run_id), record.to_dict())
    return record


def accepted_baseline(store: Store, model_version: str, committed_at: str) -> AcceptedBaseline | None:
    """The latest accepted run of this model among those committed at or before ``committed_at``."""
    records = [r for name in store.list(layout.accepted_folder(), ".json") if (r := _read_accepted(store, name))]
    records = [r for r in records if r.model_version == model_version and r.committed_at <= committed_at]
    return max(records, key=lambda r: datetime.fromisoformat(r.accepted_at), default=None)


def _read_accepted(store: Store, name: str) -> AcceptedBaseline | None:
    """An accepted record; a damaged one is skipped with a warning naming it (one bad file must not
    stop every night's monitoring), None where it is absent."""
    path = layout.accepted_file(name)
    if not store.exists(path):
        return None
    try:
        data = store.read_json(path)
        record = AcceptedBaseline.from_dict(data)
        if not (isinstance(record.run_id, str) and isinstance(record.committed_at, str)
                and isinstance(record.accepted_at, str) and isinstance(record.predicted_counts, list)):
            raise ValueError("fields missing or of the wrong type")
        datetime.fromisoformat(record.accepted_at)
    except (ValueError, TypeError, AttributeError) as e:  # JSON and Unicode errors are ValueErrors
        print(f"warning: skipping the damaged accepted-baseline record {store.url(path)} ({e}); "
              f"accept the run again (batchml monitor --accept-baseline RUN_ID) and move this file away",
              file=sys.stderr)
        return None
    return record
