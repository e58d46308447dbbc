"""``TrainConfig``: what to train, as a plain dataclass a type checker and an IDE can read.

Its hyperparameter fields mirror the settings declared once in ``batchml.train.recipes.Recipe``
(those with ``flag``), each as ``<type> | None = None``: None takes the architecture's recipe.
``tests/test_training.py`` checks that they match the declarations field by field (name, type,
default, order), and prints the lines to paste here when a setting is added or changed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from batchml import layout
from batchml.registry import DEFAULT_MODEL_NAME
from batchml.train.recipes import Recipe, recipe_for


@dataclass(frozen=True)
class TrainConfig:
    """What to train. Hyperparameters (the settings of ``batchml.train.recipes.Recipe``) left as None
    take the architecture's recipe; the card records the values used."""

    dataset: str  # labelled training partitions; a validation split is held out of them
    test_dataset: str | None = None  # touched once, after training, for the card's metrics
    name: str = DEFAULT_MODEL_NAME  # registered model name
    arch: str = "tutorial"
    # -- the recipe's settings (batchml.train.recipes.SETTINGS, in order); None: the recipe's --
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    momentum: float | None = None
    label_smoothing: float | None = None
    weight_decay: float | None = None
    ema: bool | None = None
    tta: str | None = None
    width: int | None = None
    dropout: float | None = None
    activation: str | None = None
    # -- end of the recipe's settings --
    validation_fraction: float = 0.1  # share of training ids held out, by hash of image_id
    seed: int = 0
    warm_start: str | None = None  # [NAME/]VERSION_OR_ALIAS to fine-tune (its arch, weights)

    def __post_init__(self) -> None:
        layout.check_new_name("model", self.name)  # refused now, not after the whole training

    def recipe(self) -> Recipe:
        """The architecture's ``batchml.train.recipes.Recipe`` with this configuration's values."""
        mine = {f.name for f in fields(self)}
        return recipe_for(self.arch, **{f.name: getattr(self, f.name) for f in fields(Recipe) if f.name in mine})
