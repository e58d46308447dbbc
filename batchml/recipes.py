"""How each architecture is trained: its default hyperparameters, optimizer, learning-rate
schedule and augmentation (their implementation: ``batchml.learning``). No Keras import
here, so clients can check a configuration without loading a framework.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from batchml.errors import BatchmlError


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    learning_rate: float  # Adam's rate, or the one-cycle peak for SGD
    optimizer: str  # "adam" | "sgd" (Nesterov)
    schedule: str  # "constant" | "one-cycle"
    label_smoothing: float
    weight_decay: float  # decoupled, per unit learning rate (Keras's convention)
    augment: bool  # random flips and translations of up to 2 px
    ema: bool  # keep an exponential moving average of the weights and end on it
    tta: str  # test-time augmentation of the saved model: none | flip | flip-translate
    precision: str = "float32"  # Keras dtype policy of the net's layers
    momentum: float = 0.9  # SGD's
    width: int | None = None  # architecture options (None: the architecture's default)
    dropout: float | None = None
    activation: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    "tutorial": Recipe(epochs=3, batch_size=64, learning_rate=1e-3, optimizer="adam", schedule="constant",
                       label_smoothing=0.0, weight_decay=0.0, augment=False, ema=False, tta="none"),
    # the ResNet-9/airbench schedule: SGD-Nesterov, linear one-cycle, smoothed labels
    # bfloat16 compute: twice the speed of float32 on CPUs with AMX/AVX512-BF16 and on GPUs
    # no weight averaging: it lags a schedule that ends at 0 and misses the batch-norm statistics
    # (on an H100, 16 epochs, the averaged weights tested 2-4 points below the last ones; 20
    # epochs here: 0.8845 with it, 0.8865 without)
    "fast": Recipe(epochs=20, batch_size=512, learning_rate=0.4, optimizer="sgd", schedule="one-cycle",
                   label_smoothing=0.2, weight_decay=5e-3, augment=True, ema=False, tta="flip-translate",
                   precision="mixed_bfloat16", width=32, activation="relu"),
}
TUNABLE = ("epochs", "batch_size", "learning_rate", "momentum", "label_smoothing", "weight_decay", "width", "dropout")
TTA_MODES = ("none", "flip", "flip-translate")
ACTIVATIONS = ("relu", "gelu")  # GELU trains a little better per epoch but costs twice the time on these CPUs


def recipe_for(arch: str, **overrides) -> Recipe:
    """The architecture's recipe with ``overrides`` (None values keep the default)."""
    if arch not in RECIPES:
        raise BatchmlError(f"unknown --arch {arch!r}: use one of {', '.join(RECIPES)}")
    if overrides.get("tta") not in (None, *TTA_MODES):
        raise BatchmlError(f"unknown --tta {overrides['tta']!r}: use one of {', '.join(TTA_MODES)}")
    return replace(RECIPES[arch], **{k: v for k, v in overrides.items() if v is not None})
