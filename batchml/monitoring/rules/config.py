"""The alert thresholds, one place for every rule's knobs (``--config FILE``, TOML)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from batchml.errors import BatchmlError


@dataclass(frozen=True)
class MonitorConfig:
    """The alert thresholds. ``from_file`` reads a TOML file of any of these keys."""

    shift_p_value: float = 1e-3  # per-night false alarm bound of each class-mix rule
    shift_min_js: float = 0.02  # smallest Jensen-Shannon distance (base 2) worth a class-mix alert
    history_nights: int = 30  # recent clean runs of the same model forming the nightly baseline
    accuracy_drop: float = 0.05  # labelled accuracy this far below the reference is an error
    label_free_drop: float = 0.03  # unlabelled: how far below the reference the estimate may fall
    label_free_noise_z: float = 2.33  # ... beyond this many standard errors of the night's own sampling noise
    output_min_ks: float = 0.03  # smallest KS distance of the output histograms worth an alert
    divergence_tolerance: float = 0.02  # label-free vs measured accuracy, beyond the interval
    min_labelled: int = 30  # fewer labelled rows: no accuracy verdicts
    # a smaller labelled share of the night's rows: no accuracy verdicts either (labels that arrive
    # later are judged once enough of the night is labelled; until then "too few labels to judge")
    min_label_coverage: float = 0.01
    class_p_value: float = 1e-3  # family-wise false alarm bound of the per-class recall/precision tests
    class_min_drop: float = 0.10  # smallest fall of one class's recall or precision worth an alert
    input_p_value: float = 1e-3  # per-night false alarm bound of the input-property tests (Bonferroni)
    input_min_ks: float = 0.15  # smallest KS distance of a property's histogram from training's worth an alert
    input_min_tv: float = 0.10  # smallest total variation distance of a categorical property (mode, format...)
    duplicate_min_share: float = 0.01  # exact copies (within the run or of the recent nights) worth an alert
    near_duplicate_min_share: float = 0.05  # near copies within the run worth an alert (clean CIFAR: about 1%)
    duplicate_nights: int = 7  # recent runs of the same model whose images tonight's are compared with
    novel_p_value: float = 1e-3  # per-night false alarm bound of the novel-image test
    novel_min_excess: float = 0.10  # novel share beyond the validation split's rate worth an alert
    segments_max: int = 10  # segment values monitored one by one (the rest fold into "(other)")
    segment_min_rows: int = 200  # fewer rows: a segment is not judged alone
    # a night (or a segment that sent images every recent night) with fewer images than this share of its
    # smallest recent clean night is short: images late, or a source gone
    volume_min_ratio: float = 0.5

    @classmethod
    def from_file(cls, path: str | Path) -> MonitorConfig:
        """Thresholds from a TOML file (top level, or a ``[monitor]`` table); unknown keys and wrong
        types are refused, naming the file and the keys it may hold."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise BatchmlError(f"--config {path}: no such file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise BatchmlError(f"--config {path}: not a readable TOML file ({e}); "
                               "fix it, or leave out --config for the defaults") from None
        data = data.get("monitor", data)
        known = {f.name: f for f in fields(cls)}
        if unknown := sorted(set(data) - set(known)):
            raise BatchmlError(f"--config {path}: unknown key(s) {', '.join(unknown)}; "
                               f"known: {', '.join(known)}")
        values = {}
        for key, value in data.items():
            want = int if known[key].type in ("int", int) else float
            if isinstance(value, float) and not math.isfinite(value):  # NaN compares false: its rule never fires
                raise BatchmlError(f"--config {path}: {key} must be a finite number, not {value}")
            if isinstance(value, bool) or not isinstance(value, int | float) or (want is int and value != int(value)):
                raise BatchmlError(f"--config {path}: {key} must be a{'n integer' if want is int else ' number'}, "
                                   f"not {value!r}")
            if value < 0:
                raise BatchmlError(f"--config {path}: {key} must not be negative ({value})")
            if key.endswith("_p_value") and value > 1:
                raise BatchmlError(f"--config {path}: {key} is a probability: between 0 and 1, not {value}")
            values[key] = want(value)
        return replace(cls(), **values)
