"""Shift detection on simulated nights of real CIFAR-10 test images scored by a trained model.

    python benchmarks/shift_detection.py [--root benchmarks/out/shift-store] [--epochs 5]

Trains the tutorial CNN on the 50,000 training images (or reuses the store's production
model), scores the 10,000 test images through `batchml score`, predicts a random 5,000 of
them under 9 corruptions x 3 severities and its validation split (both cached beside the
store; the card's label-free and BBSE fields are recomputed from the latter), then monitors simulated
unlabelled nights of 2,000 with the same `PartitionStats`, `evaluate`, `baseline_from_rows`
and `alerts` that `batchml monitor` runs, and with the previous release's rules (mean-based
baseline, reference AND baseline, average confidence) for comparison. Prints, for both:
- mixed sequences (clean, doubled-class, Dirichlet-mixed and corrupted nights in random
  order): doubled-class detection (target >= 95%), false alarms on clean nights (<= 1%);
- a persistent 1.3x shift of one class from a random night on: median nights to detection
  (target <= 5), false alarms per 100 clean nights (<= 1);
- the corruption suite: label-free accuracy MAE of the estimate that alerts (COT), of ATC and of
  average confidence (target <= 4 points; <= 1.5 on clean nights), alerts on nights >= 5 points
  below the reference;
  and the MAE of every label-free candidate (ATC on entropy or top probability, raw or
  temperature-scaled; DoC; average confidence) on the same nights;
- the mean L1 error of the estimated class priors on Dirichlet(1) nights of 5,000, by BBSE and by
  MLLS/EM from the mergeable cells, and the coverage of BBSE's 95% intervals (bootstrap over
  validation rows vs the normal approximation).
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from corruptions import CORRUPTIONS, SEVERITIES
from scipy.stats import chi2

from batchml import layout
from batchml.backend import configure_backend
from batchml.cli import cifar10_source
from batchml.cluster import ClusterConfig, connect
from batchml.data import datasets
from batchml.data.images import Preprocessing
from batchml.data.ingest import ingest
from batchml.errors import BatchmlError
from batchml.monitoring import MonitorConfig, evaluate
from batchml.monitoring.baseline import baseline_from_rows
from batchml.monitoring.label_shift import estimate_priors, mlls_priors
from batchml.records import ModelCard, RunManifest
from batchml.reference import atc_reference, encode_rows
from batchml.registry import load_model, promote, read_card, resolve
from batchml.score.scoring import ScoreConfig, score
from batchml.stats import BiasCorrection, PartitionStats, scale_temperature
from batchml.store import Store, StoreConfig
from batchml.train.calibration import fit_bcts
from batchml.train.training import TrainConfig, train

NIGHT, BBSE_NIGHT, BBSE_NIGHTS = 2000, 5000, 50
MIXED_SEQUENCES, MIXED_NIGHTS = 20, 60
PERSIST_SEQUENCES, PERSIST_WARMUP, PERSIST_ONSET, PERSIST_AFTER = 30, 30, 30, 15  # onset in [30, 60)
CORRUPT_NIGHTS = 8  # unlabelled nights per corruption and severity
CORRUPT_IMAGES = 5000  # test images corrupted per kind and severity
CFG = MonitorConfig()


def prepare(store: Store, epochs: int) -> tuple[ModelCard, np.ndarray, np.ndarray]:
    """The model's card and its test-set probabilities (N, K) and labels (N,), via batchml score."""
    source = cifar10_source()
    for split in ("train", "test"):
        ingest(store, source, f"cifar10-{split}", split)
    with connect(ClusterConfig()) as client:
        try:
            mv = resolve(store, "production")
            print(f"reusing {mv} from {store.url()}")
        except BatchmlError:
            mv, _ = train(client, store, TrainConfig("cifar10-train", "cifar10-test", epochs=epochs))
            promote(store, mv)
        score(client, store, ScoreConfig("cifar10-test", str(mv), run_id=f"shift-bench-{mv.version}"))
    preds = pd.read_parquet(store.path(layout.run_path(f"shift-bench-{mv.version}", "predictions")))
    return read_card(store, mv), np.stack(preds.probabilities.to_numpy()), preds.label.to_numpy().astype(int)


def validation_predictions(store: Store, card: ModelCard, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """The model's raw probabilities (N, K) and labels (N,) on its validation split, cached beside the store."""
    cache = out / f"validation-probs-{card.version}.npz"
    if not cache.exists():
        configure_backend()
        x, y, ids, _ = datasets.load_labelled(store, card.data.dataset, Preprocessing())
        val = datasets.in_validation(ids, card.training["validation_fraction"])
        model = load_model(store, resolve(store, "production"))
        np.savez(cache, probs=model.predict(x[val], batch_size=512, verbose=0), labels=y[val])
    saved = np.load(cache)
    return saved["probs"], saved["labels"]


def with_monitoring_fields(card: ModelCard, probs: np.ndarray, labels: np.ndarray) -> ModelCard:
    """The card as this branch's training writes it: the label-free, BBSE and MLLS fields recomputed
    from the validation predictions, so a model trained by an earlier release meets the current rules."""
    return replace(card, atc=atc_reference(probs, labels, card.calibration.temperature),
                   validation_rows=encode_rows(probs, labels),
                   calibration=replace(card.calibration, bcts=fit_bcts(probs, labels).to_dict()))


# -- label-free accuracy: the candidates ----------------------------------------------------------------


def _negative_entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return 1 + (q * np.log(q)).sum(axis=1) / np.log(p.shape[1])


def _max_probability(p: np.ndarray) -> np.ndarray:
    return p.max(axis=1)


def label_free_candidates(temperature: float, val_probs: np.ndarray, val_labels: np.ndarray) -> dict:
    """Label-free accuracy estimators fitted on the validation split, each a function of a night's raw
    probabilities; each is a counter or a sum per partition, so all of them would fold exactly.
    ATC (Garg et al. 2022) on negative entropy (NE) or the top probability (MC), on raw or
    temperature-scaled probabilities; DoC (Guillory et al. 2021): validation accuracy plus the
    night's change of average confidence; average confidence (AC) after temperature scaling."""
    def atc(score, calibrated: bool):
        scaled = (lambda p: scale_temperature(p, temperature)) if calibrated else (lambda p: p)
        v = scaled(val_probs)
        t = np.quantile(score(v), 1 - float((v.argmax(axis=1) == val_labels).mean()))
        return lambda p: float((score(scaled(p)) > t).mean())

    cal = scale_temperature(val_probs, temperature)
    doc_offset = float((cal.argmax(axis=1) == val_labels).mean() - cal.max(axis=1).mean())
    return {"atc_ne_cal": atc(_negative_entropy, True), "atc_ne_raw": atc(_negative_entropy, False),
            "atc_mc_cal": atc(_max_probability, True), "atc_mc_raw": atc(_max_probability, False),
            "doc_cal": lambda p: doc_offset + float(scale_temperature(p, temperature).max(axis=1).mean()),
            "ac_cal": lambda p: float(scale_temperature(p, temperature).max(axis=1).mean())}


def corrupted_probs(store: Store, out: Path, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Probabilities (N, K) of CORRUPT_IMAGES random test images, clean ("clean") and under every
    corruption and severity, with their labels, cached beside the store (predicting them takes
    minutes on 2 CPU cores). Random, not the first: the test set is stored class by class."""
    cache = out / f"corrupted-probs-{resolve(store, 'production').version}-{seed}.npz"
    if cache.exists():
        probs = dict(np.load(cache))
        return probs, probs.pop("labels")
    configure_backend()
    model = load_model(store, resolve(store, "production"))
    x, y, _, _ = datasets.load_labelled(store, "cifar10-test", Preprocessing())
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(y), CORRUPT_IMAGES, replace=False)
    x, y = x[pick], y[pick]
    probs = {"clean": model.predict(x, batch_size=512, verbose=0)}
    probs |= {f"{name}-{s}": model.predict(fn(x, s, rng), batch_size=512, verbose=0)
              for name, fn in CORRUPTIONS.items() for s in SEVERITIES}
    np.savez(cache, labels=y, **probs)
    return probs, y


# -- monitoring a night, the new way and the old way ------------------------------------------------


def night_stats(card: ModelCard, probs: np.ndarray, idx: np.ndarray) -> PartitionStats:
    """An unlabelled night's statistics, as scoring writes them."""
    return PartitionStats.from_predictions(probs[idx], np.full(len(idx), -1), card.calibration.temperature,
                                           bcts=BiasCorrection.from_dict(card.calibration.bcts))


class Monitor:
    """Chains nights as `batchml monitor` does: this branch's rules and the previous release's."""

    def __init__(self, card: ModelCard) -> None:
        self.card, self.rows, self.old_history = card, [], []

    def night(self, stats: PartitionStats) -> tuple[list[str], list[str], dict]:
        run = RunManifest.from_dict({"run_id": f"n{len(self.rows)}", "dataset": "sim", "model_version": "m/v1",
                                     "committed_at": f"{len(self.rows):06d}", "classes": self.card.classes,
                                     "max_error_ratio": 0.01})
        report = evaluate(run, stats, self.card, baseline_from_rows(self.rows, None, CFG.history_nights), CFG)
        row = report.row.to_dict()
        self.rows.append(row)
        old = old_alerts(row, old_history_p(self.old_history[-CFG.history_nights:], stats.predicted_counts))
        self.old_history.append(stats.predicted_counts)
        return row["alert_kinds"], old, row


def old_history_p(history: list[np.ndarray], counts: np.ndarray) -> float | None:
    """The previous release's baseline: the mean of every night's Pearson statistic sets phi."""
    if len(history) < 5:
        return None
    hist = np.asarray(history, dtype=np.float64)
    total = hist.sum(axis=0)
    df = max(int((total > 0).sum()) - 1, 1)
    stats = [_pearson(h, (total - h) / (total.sum() - h.sum())) for h in hist]
    phi = max(1.0, float(np.mean(stats)) / df)
    return float(chi2.sf(_pearson(np.asarray(counts, float), total / total.sum()) / phi, df))


def _pearson(counts: np.ndarray, share: np.ndarray) -> float:
    e = counts.sum() * share[share > 0]
    return float(((counts[share > 0] - e) ** 2 / e).sum())


def old_alerts(row: dict, history_p: float | None) -> list[str]:
    """The previous release's unlabelled alerts: reference AND baseline; average confidence."""
    out = []
    if row["p_value"] < CFG.shift_p_value and row["js_distance"] >= CFG.shift_min_js \
            and (history_p is None or history_p < CFG.shift_p_value):
        out.append("class_shift")
    if row["expected_accuracy"] < row["reference_accuracy"] - CFG.accuracy_drop:
        out.append("expected_accuracy_drop")
    return out


# -- night generators ---------------------------------------------------------------------------------


def draw_by_class(rng, labels: np.ndarray, counts: np.ndarray, replace: bool) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=replace)
                           for c, n in enumerate(counts) if n])


def tilted(k: int, cls: int, factor: float) -> np.ndarray:
    """Uniform priors with one class's share times ``factor``, the others scaled to fit."""
    prior = np.full(k, (1 - factor / k) / (k - 1))
    prior[cls] = factor / k
    return prior


# -- the suites -------------------------------------------------------------------------------------------


def mixed_sequences(rng, card, probs, labels, corrupted, corrupted_labels) -> dict:
    """Clean, doubled-class, Dirichlet-mixed and corrupted nights in random order."""
    k, ref = probs.shape[1], card.reference.accuracy
    tally = {m: {"doubled": [], "clean": [], "corrupt_drop": []} for m in ("new", "old")}
    false_kinds = {"new": [], "old": []}  # the alert kinds raised on clean nights
    names = sorted(set(corrupted) - {"clean"})
    for _ in range(MIXED_SEQUENCES):
        mon = Monitor(card)
        for _ in range(MIXED_NIGHTS):
            kind = rng.choice(["clean", "doubled", "dirichlet", "corrupt"], p=[0.55, 0.15, 0.1, 0.2])
            p_, lab = probs, labels
            if kind == "clean":
                idx = rng.choice(len(labels), NIGHT, replace=False)
            elif kind == "doubled":
                idx = draw_by_class(rng, labels, rng.multinomial(NIGHT, tilted(k, rng.integers(k), 2.0)), False)
            elif kind == "dirichlet":
                idx = draw_by_class(rng, labels, rng.multinomial(NIGHT, rng.dirichlet(np.ones(k))), True)
            else:
                p_, lab = corrupted[names[rng.integers(len(names))]], corrupted_labels
                idx = rng.choice(len(lab), NIGHT, replace=False)
            new, old, _ = mon.night(night_stats(card, p_, idx))
            accuracy = float((p_[idx].argmax(axis=1) == lab[idx]).mean())
            for m, fired in (("new", new), ("old", old)):
                if kind in ("clean", "doubled"):
                    tally[m][kind].append(bool(fired))
                if kind == "clean":
                    false_kinds[m].extend(fired)
                if kind == "corrupt" and accuracy <= ref - 0.05:
                    tally[m]["corrupt_drop"].append(bool(fired))
    return {m: {"doubled_detection": float(np.mean(t["doubled"])), "clean_false_alarm": float(np.mean(t["clean"])),
                "corrupt_drop_detection": float(np.mean(t["corrupt_drop"])), "doubled_nights": len(t["doubled"]),
                "clean_nights": len(t["clean"]), "corrupt_drop_nights": len(t["corrupt_drop"]),
                "clean_alert_kinds": dict(Counter(false_kinds[m]))}
            for m, t in tally.items()}


def persistent_shift(rng, card, probs, labels) -> dict:
    """One class at 1.3x from a random night on; nights to the first alert after the onset."""
    k = probs.shape[1]
    delays = {"new": [], "old": []}
    clean = {"new": [], "old": []}
    for _ in range(PERSIST_SEQUENCES):
        mon, onset, cls = Monitor(card), PERSIST_WARMUP + rng.integers(PERSIST_ONSET), rng.integers(k)
        first = {}
        for t in range(PERSIST_WARMUP + PERSIST_ONSET + PERSIST_AFTER):
            shifted = t >= onset
            if shifted:
                idx = draw_by_class(rng, labels, rng.multinomial(NIGHT, tilted(k, cls, 1.3)), False)
            else:
                idx = rng.choice(len(labels), NIGHT, replace=False)
            new, old, _ = mon.night(night_stats(card, probs, idx))
            for m, fired in (("new", new), ("old", old)):
                if not shifted:
                    clean[m].append(bool(fired))
                elif fired and m not in first:
                    first[m] = t - onset + 1
            if shifted and len(first) == 2:
                break
        for m in delays:
            delays[m].append(first.get(m, PERSIST_AFTER + 1))
    return {m: {"median_nights_to_detection": float(np.median(delays[m])),
                "detected_within_10": float(np.mean(np.asarray(delays[m]) <= 10)),
                "false_alarms_per_100_clean_nights": 100 * float(np.mean(clean[m])),
                "clean_nights": len(clean[m])} for m in delays}


def corruption_suite(rng, card, probs, labels, corrupted, corrupted_labels, candidates: dict) -> dict:
    """Unlabelled nights of corrupted test images after a clean baseline: label-free error and alerts."""
    ref = card.reference.accuracy
    warm = Monitor(card)
    for _ in range(CFG.history_nights):
        warm.night(night_stats(card, probs, rng.choice(len(labels), NIGHT, replace=False)))
    out = {}
    for name, p_ in corrupted.items():
        lab = corrupted_labels
        nights = []
        for _ in range(CORRUPT_NIGHTS):
            mon = Monitor(card)
            mon.rows, mon.old_history = list(warm.rows), list(warm.old_history)
            idx = rng.choice(len(lab), NIGHT, replace=False)
            new, old, row = mon.night(night_stats(card, p_, idx))
            nights.append({"accuracy": float((p_[idx].argmax(axis=1) == lab[idx]).mean()),
                           "label_free": row["label_free_accuracy"], "cot": row["cot_accuracy"],
                           "atc": row["atc_accuracy"], "confidence": row["expected_accuracy"],
                           "method": row["label_free_method"], "new": bool(new), "old": bool(old), "kinds": new,
                           **{name: f(p_[idx]) for name, f in candidates.items()}})
        out[name] = nights
    return summarise_corruption(out, ref, list(candidates))


def summarise_corruption(out: dict, ref: float, candidates: list[str]) -> dict:
    corrupt = [n for name, ns in out.items() if name != "clean" for n in ns]
    drop = [n for n in corrupt if n["accuracy"] <= ref - 0.05]

    def mae(nights, key):
        return 100 * float(np.mean([abs(n[key] - n["accuracy"]) for n in nights]))

    methods = ("label_free", "cot", "atc", "confidence")
    return {
        "label_free_method": out["clean"][0]["method"],
        "mae_points": {m: mae(corrupt, m) for m in methods},
        "clean_mae_points": {m: mae(out["clean"], m) for m in methods},
        # every candidate on the same nights, computed from the nights' probabilities
        "candidates": {c: {"mae_points": mae(corrupt, c), "clean_mae_points": mae(out["clean"], c),
                           "severity_3_mae_points": mae([n for name, ns in out.items() if name.endswith("-3")
                                                         for n in ns], c)} for c in candidates},
        "drop_nights": len(drop),
        "drop_detection": {m: float(np.mean([n[m] for n in drop])) if drop else None for m in ("new", "old")},
        "clean_false_alarm": {m: float(np.mean([n[m] for n in out["clean"]])) for m in ("new", "old")},
        "by_corruption": {name: {"accuracy": float(np.mean([n["accuracy"] for n in ns])),
                                 "cot": float(np.mean([n["cot"] for n in ns])),
                                 "atc": float(np.mean([n["atc"] for n in ns])),
                                 "confidence": float(np.mean([n["confidence"] for n in ns])),
                                 "alert_rate": float(np.mean([n["new"] for n in ns])),
                                 "old_alert_rate": float(np.mean([n["old"] for n in ns]))}
                          for name, ns in out.items()},
    }


def bbse_error(rng, card, probs, labels) -> dict:
    """Mean L1 error of the estimated priors, and how often the 95% intervals hold the night's true
    share: the bootstrap over validation rows, and the normal approximation it replaced."""
    k, l1, covered = probs.shape[1], {"bbse": [], "mlls": [], "mlls_rows": []}, {"bootstrap": [], "normal": []}
    joint = np.asarray(card.metrics.validation.prob_confusion)
    bcts, source = BiasCorrection.from_dict(card.calibration.bcts), joint.sum(axis=1)
    for _ in range(BBSE_NIGHTS):
        counts = rng.multinomial(BBSE_NIGHT, rng.dirichlet(np.ones(k)))
        idx = draw_by_class(rng, labels, counts, True)
        stats = night_stats(card, probs, idx)
        _, _, row = Monitor(card).night(stats)
        truth = counts / BBSE_NIGHT
        l1["bbse"].append(np.abs(np.asarray(row["estimated_priors"]) - truth).sum())
        l1["mlls"].append(np.abs(np.asarray(row["mlls_priors"]) - truth).sum())
        # EM on the rows themselves (each row its own cell): what the cells' approximation costs
        rows = bcts.apply(probs[idx])
        l1["mlls_rows"].append(np.abs(mlls_priors(np.ones(len(rows)), rows, source) - truth).sum())
        normal = estimate_priors(joint, stats.prob_sums / stats.rows, stats.rows)
        for m, (low, high) in (("bootstrap", (row["estimated_priors_low"], row["estimated_priors_high"])),
                               ("normal", (normal["priors_low"], normal["priors_high"]))):
            covered[m] += list((np.asarray(low) <= truth) & (truth <= np.asarray(high)))
    return {"l1": float(np.mean(l1["bbse"])), "mlls_l1": float(np.mean(l1["mlls"])),
            "mlls_rows_l1": float(np.mean(l1["mlls_rows"])),
            "coverage": {m: float(np.mean(c)) for m, c in covered.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).parent / "out" / "shift-store"))
    parser.add_argument("--epochs", type=int, default=5, help="training epochs when the store has no model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare-only", action="store_true", help="train, score and cache, then stop")
    args = parser.parse_args()
    started = time.perf_counter()
    store = Store(StoreConfig(args.root))
    card, probs, labels = prepare(store, args.epochs)
    corrupted, corrupted_labels = corrupted_probs(store, Path(args.root).parent, args.seed)
    val_probs, val_labels = validation_predictions(store, card, Path(args.root).parent)
    card = with_monitoring_fields(card, val_probs, val_labels)
    candidates = label_free_candidates(card.calibration.temperature, val_probs, val_labels)
    if args.prepare_only:
        return 0
    rng = np.random.default_rng(args.seed)
    print(f"model {card.name}/{card.version}: test accuracy {card.test_accuracy:.4f}, "
          f"reference ({card.reference.split} split) accuracy {card.reference.accuracy:.4f}, "
          f"validation rows {card.validation_rows['rows']:,}, "
          f"temperature {card.calibration.temperature:.3f}, ATC threshold {card.atc_threshold:.4f}")
    figures = {
        "mixed": mixed_sequences(rng, card, probs, labels, corrupted, corrupted_labels),
        "persistent": persistent_shift(rng, card, probs, labels),
        "corruption": corruption_suite(rng, card, probs, labels, corrupted, corrupted_labels, candidates),
        "bbse": bbse_error(rng, card, probs, labels),
        "test_accuracy": card.test_accuracy,
        "reference_accuracy": card.reference.accuracy,
    }
    figures["seconds"] = round(time.perf_counter() - started, 1)
    report(figures)
    print(json.dumps(figures))
    return 0


def report(f: dict) -> None:
    for m, name in (("new", "this branch"), ("old", "previous release")):
        x, p = f["mixed"][m], f["persistent"][m]
        print(f"[{name}] mixed sequences ({MIXED_SEQUENCES} x {MIXED_NIGHTS} nights of {NIGHT}): doubled class "
              f"detected on {x['doubled_detection']:.1%} of {x['doubled_nights']} nights (target >= 95%), "
              f"false alarms on {x['clean_false_alarm']:.2%} of {x['clean_nights']} clean nights (target <= 1%), "
              f"corrupted nights >= 5 points below reference alerted {x['corrupt_drop_detection']:.1%} "
              f"of {x['corrupt_drop_nights']}; alerts on clean nights by kind {x['clean_alert_kinds']}")
        print(f"[{name}] persistent 1.3x shift ({PERSIST_SEQUENCES} sequences): median nights to detection "
              f"{p['median_nights_to_detection']:.1f} (target <= 5), detected within 10 nights "
              f"{p['detected_within_10']:.0%}, {p['false_alarms_per_100_clean_nights']:.2f} false alarms per 100 "
              f"clean nights (target <= 1)")
    c = f["corruption"]
    mae, clean = c["mae_points"], c["clean_mae_points"]
    print(f"corruption suite ({len(c['by_corruption']) - 1} kinds x severities, {CORRUPT_NIGHTS} unlabelled nights "
          f"each): label-free MAE ({c['label_free_method']}, the estimate that alerts) {mae['label_free']:.2f} points "
          f"(target <= 4), ATC {mae['atc']:.2f}, average confidence {mae['confidence']:.2f}; on clean nights "
          f"{clean['label_free']:.2f} (target <= 1.5), ATC {clean['atc']:.2f}, average confidence "
          f"{clean['confidence']:.2f}; nights >= 5 points below reference: "
          f"{c['drop_nights']}, alerted {c['drop_detection']['new']:.1%} (previous release "
          f"{c['drop_detection']['old']:.1%}; target 100%)")
    print("label-free candidates (MAE points over the suite / on clean nights / at severity 3):")
    for name, m in c["candidates"].items():
        print(f"  {name:<11} {m['mae_points']:5.2f} / {m['clean_mae_points']:4.2f} / {m['severity_3_mae_points']:5.2f}")
    for name, b in c["by_corruption"].items():
        print(f"  {name:<18} accuracy {b['accuracy']:.3f}  COT {b['cot']:.3f}  ATC {b['atc']:.3f}  "
              f"confidence {b['confidence']:.3f}  "
              f"alerted {b['alert_rate']:.0%} (previous {b['old_alert_rate']:.0%})")
    b = f["bbse"]
    print(f"mean L1 error of the estimated class priors, {BBSE_NIGHTS} Dirichlet(1) nights of {BBSE_NIGHT}: "
          f"BBSE {b['l1']:.4f}, MLLS/EM (bias-corrected, from cells) {b['mlls_l1']:.4f} (target <= 0.05; "
          f"EM on the rows themselves {b['mlls_rows_l1']:.4f}); "
          "BBSE's 95% intervals hold the true share for "
          f"{b['coverage']['bootstrap']:.1%} of classes x nights (bootstrap) vs {b['coverage']['normal']:.1%} "
          "(normal approximation)")


if __name__ == "__main__":
    sys.exit(main())
