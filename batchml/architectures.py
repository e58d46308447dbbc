"""Model architectures by name. Each takes uint8 pixels and returns class probabilities."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from batchml.errors import BatchmlError
from batchml.images import Preprocessing


def tutorial(num_classes: int, prep: Preprocessing) -> keras.Model:
    """The tutorial's CNN: conv32-conv32-pool-dropout, conv64-conv64-pool-dropout, dense512."""
    return keras.Sequential(
        [
            keras.Input((prep.height, prep.width, 3), dtype="uint8"),
            layers.Rescaling(1 / 255),  # scaling lives in the model: scoring feeds raw pixels
            layers.Conv2D(32, 3, padding="same", activation="relu"),  # (H, W, 32)
            layers.Conv2D(32, 3, activation="relu"),  # (H-2, W-2, 32)
            layers.MaxPooling2D(),
            layers.Dropout(0.25),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),  # (6, 6, 64) for 32x32 input
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="tutorial",
    )


ARCHITECTURES: dict[str, Callable[[int, Preprocessing], keras.Model]] = {"tutorial": tutorial}


def build(arch: str, num_classes: int, prep: Preprocessing) -> keras.Model:
    if arch not in ARCHITECTURES:
        raise BatchmlError(f"unknown --arch {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](num_classes, prep)
