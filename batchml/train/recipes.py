"""How each architecture is trained: its default hyperparameters, optimizer, learning-rate
schedule and augmentation (their implementation: ``batchml.train.learning``). No Keras import
here, so clients can check a configuration without loading a framework.

Each setting is declared once, as a field of ``Recipe`` with its metadata (help, whether it
is a flag and tunable, its choices). From that declaration come the CLI flags
(``batchml.cli.training_arguments``), ``TrainConfig``'s overrides, the sweep's value types
and the benchmark's flags; ``check_setting`` validates a value wherever one enters.
"""

from __future__ import annotations

import typing
from dataclasses import Field, asdict, dataclass, field, fields, replace

from batchml.errors import BatchmlError

TTA_MODES = ("none", "flip", "flip-translate")
ACTIVATIONS = ("relu", "gelu")  # GELU trains a little better per epoch but costs twice the time on these CPUs


def _setting(help: str, *, flag: bool = True, tunable: bool = False, choices: tuple[str, ...] | None = None,
             minimum: int | None = None) -> dict:
    """A setting's metadata: ``flag`` (a ``batchml train`` option and a ``TrainConfig`` override),
    ``tunable`` (a sweep may vary it), ``choices``, ``minimum`` (of a whole number)."""
    return {"help": help, "flag": flag, "tunable": tunable, "choices": choices, "minimum": minimum}


@dataclass(frozen=True)
class Recipe:
    epochs: int = field(metadata=_setting("passes over the training split", tunable=True, minimum=1))
    batch_size: int = field(metadata=_setting("images per training step", tunable=True, minimum=1))
    learning_rate: float = field(metadata=_setting("Adam's rate, or the one-cycle peak for SGD", tunable=True))
    momentum: float = field(metadata=_setting("SGD's momentum", tunable=True))
    optimizer: str = field(metadata=_setting("adam | sgd (Nesterov)", flag=False))
    schedule: str = field(metadata=_setting("constant | one-cycle", flag=False))
    label_smoothing: float = field(metadata=_setting("label smoothing of the loss", tunable=True))
    # decoupled, per unit learning rate (Keras's convention)
    weight_decay: float = field(metadata=_setting("decoupled weight decay", tunable=True))
    augment: bool = field(metadata=_setting("random flips and translations of up to 2 px", flag=False))
    ema: bool = field(metadata=_setting("end on a moving average of the weights"))
    tta: str = field(metadata=_setting("test-time augmentation built into the saved model (flip-translate: 6 "
                                       "passes per image; flip: 2 passes, faster scoring)", choices=TTA_MODES))
    precision: str = field(default="float32", metadata=_setting("Keras dtype policy of the net's layers", flag=False))
    # architecture options (None: the architecture's default)
    width: int | None = field(default=None, metadata=_setting("fast: channels of the first group", tunable=True))
    dropout: float | None = field(default=None, metadata=_setting("fast: dropout before the head", tunable=True))
    activation: str | None = field(default=None, metadata=_setting("fast: gelu trains slower on CPUs",
                                                                   choices=ACTIVATIONS))

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    "tutorial": Recipe(epochs=3, batch_size=64, learning_rate=1e-3, momentum=0.9, optimizer="adam",
                       schedule="constant", label_smoothing=0.0, weight_decay=0.0, augment=False, ema=False,
                       tta="none"),
    # the ResNet-9/airbench schedule: SGD-Nesterov, linear one-cycle, smoothed labels
    # bfloat16 compute: twice the speed of float32 on CPUs with AMX/AVX512-BF16 and on GPUs
    # no weight averaging: it lags a schedule that ends at 0 and misses the batch-norm statistics
    # (on an H100, 16 epochs, the averaged weights tested 2-4 points below the last ones; 20
    # epochs here: 0.8845 with it, 0.8865 without)
    "fast": Recipe(epochs=20, batch_size=512, learning_rate=0.4, momentum=0.9, optimizer="sgd",
                   schedule="one-cycle", label_smoothing=0.2, weight_decay=5e-3, augment=True, ema=False,
                   tta="flip-translate", precision="mixed_bfloat16", width=32, activation="relu"),
}
SETTINGS: tuple[Field, ...] = tuple(f for f in fields(Recipe) if f.metadata["flag"])  # what a user may set
TUNABLE = tuple(f.name for f in SETTINGS if f.metadata["tunable"])


def setting_type(setting: Field) -> type:
    """The value type of a setting (``int`` for ``int | None``)."""
    hint = typing.get_type_hints(Recipe)[setting.name]
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def recipe_defaults(name: str) -> str:
    """Each architecture's default of a setting, for help texts: ``tutorial 3, fast 20``."""
    found = [f"{arch} {getattr(r, name)}" for arch, r in RECIPES.items() if getattr(r, name) is not None]
    return ", ".join(found) or "none"


def check_arch(arch: str) -> str:
    if arch not in RECIPES:
        raise BatchmlError(f"unknown --arch {arch!r}: use one of {', '.join(RECIPES)}")
    return arch


def check_setting(name: str, value):
    """A setting's value against its declared choices (None: unset, the recipe's)."""
    choices = next(f for f in fields(Recipe) if f.name == name).metadata["choices"]
    if value is not None and choices and value not in choices:
        raise BatchmlError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
    return value


def recipe_for(arch: str, **overrides) -> Recipe:
    """The architecture's recipe with ``overrides`` (None values keep the default)."""
    check_arch(arch)
    for name, value in overrides.items():
        check_setting(name, value)
    return replace(RECIPES[arch], **{k: v for k, v in overrides.items() if v is not None})
