"""What the registry keeps beside the cards: a model's aliases, and a sweep's plan and result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from batchml import layout
from batchml.records.base import _Record


@dataclass
class Aliases(_Record):
    """``models/<name>/aliases.json``: which version each alias (e.g. ``production``) points at."""

    aliases: dict[str, str]  # alias -> version tag (vN); empty where nothing was promoted
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.aliases = self.aliases or {}

    @classmethod
    def _upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        # version 0 (written before records had a version) was the mapping itself: alias -> "vN"
        return data if isinstance(data.get("aliases"), dict) else {"aliases": data}

    @classmethod
    def read(cls, store, name: str) -> Aliases:
        """The model's aliases (``store``: a ``batchml.store.Store``)."""
        rel = layout.aliases_path(name)
        return cls.from_dict(store.read_json(rel)) if store.exists(rel) else cls.written({})


@dataclass
class Sweep(_Record):
    """``sweeps/<sweep_id>/sweep.json`` (``batchml.train.sweep``): the plan, written when the sweep
    starts, then with its result once the best trial is registered. Its trials' rows are a table
    beside it (``layout.SWEEP_TRIALS``)."""

    RESULT: ClassVar[tuple[str, ...]] = ("best_trial", "best_params", "best_validation_accuracy", "registered",
                                         "test_accuracy", "finished_at")

    sweep_id: str
    base: dict  # the ``TrainConfig`` every trial starts from, as ``dataclasses.asdict`` writes it
    space: dict[str, list]  # hyperparameter -> the values to try
    trials: list[dict]  # each trial's values, in trial order
    # the result: None until the sweep is finished (and then left out of the file)
    best_trial: int | None = None
    best_params: dict | None = None
    best_validation_accuracy: float | None = None
    registered: str | None = None  # the version the best trial became (NAME/vN)
    test_accuracy: float | None = None  # None without a test dataset
    finished_at: str | None = None  # UTC, ISO 8601
    schema_version: int = _Record.SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # an unfinished plan has no result keys, as the releases before records wrote it: they take
        # a plan with "registered" for a finished sweep
        return {k: v for k, v in super().to_dict().items() if v is not None or k not in self.RESULT}

    @property
    def finished(self) -> bool:
        return self.registered is not None
