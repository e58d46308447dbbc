"""The parts of a training recipe: the one-cycle learning rate, the optimizer, and shuffled,
augmented batches. ``keras.ops`` and numpy only, so a recipe runs on TensorFlow, JAX or torch.
"""

from __future__ import annotations

import keras
import numpy as np

from batchml.train.recipes import Recipe


@keras.saving.register_keras_serializable(package="batchml")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``start * peak`` to ``peak`` over the first ``warmup`` share of
    the steps, then linear decay to 0 at ``total_steps``."""

    def __init__(self, peak: float, total_steps: int, warmup: float = 0.2, start: float = 0.1) -> None:
        self.peak, self.total_steps, self.warmup, self.start = peak, total_steps, warmup, start

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        top = max(1.0, self.warmup * self.total_steps)
        rising = self.peak * (self.start + (1 - self.start) * step / top)
        falling = self.peak * keras.ops.maximum(0.0, (self.total_steps - step) / max(1.0, self.total_steps - top))
        return keras.ops.where(step < top, rising, falling)

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup, "start": self.start}


def optimizer(recipe: Recipe, steps_per_epoch: int, learning_rate: float):
    """The recipe's optimizer at ``learning_rate`` (the one-cycle peak, where scheduled)."""
    lr = learning_rate
    if recipe.schedule == "one-cycle":
        lr = OneCycle(lr, recipe.epochs * steps_per_epoch)
    extra = {"use_ema": True, "ema_momentum": 0.99} if recipe.ema else {}
    if recipe.weight_decay:
        extra["weight_decay"] = recipe.weight_decay
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=recipe.momentum, nesterov=True, **extra)
    return keras.optimizers.Adam(lr, **extra)


def augment(x: np.ndarray, rng: np.random.Generator, flip: np.ndarray, shift: int = 2) -> np.ndarray:
    """Random translations of up to ``shift`` px (reflected borders), and left-right flips
    of the images where ``flip`` (a boolean per image; ``Batches`` alternates them) says.

    Images are grouped by their draw (offset, flip) and each group is copied as one slice:
    a per-pixel gather costs five times as much, and a GPU would wait on it."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * shift + 1, (2, n))
    out = np.empty_like(x)
    draws = (dy * (2 * shift + 1) + dx) * 2 + flip
    for draw in np.unique(draws):
        (i, j), mirrored = divmod(int(draw) // 2, 2 * shift + 1), bool(draw % 2)
        rows = np.flatnonzero(draws == draw)
        crop = padded[rows, i:i + h, j:j + w]
        out[rows] = crop[:, :, ::-1] if mirrored else crop
    return out


class Batches(keras.utils.PyDataset):
    """Shuffled batches, new every epoch, from a seeded generator: the same seed gives the
    same batches. Every batch is full (one compiled step; the few images left over differ
    each epoch). With ``augmented``, images are translated at random and flipped every
    other epoch, each starting on a random side: every image is seen both ways in any two
    epochs, where random flips repeat a side half the time (airbench's alternating flip)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, augmented: bool) -> None:
        super().__init__()
        self.x, self.y, self.augmented = x, y, augmented
        self.batch_size = min(batch_size, len(x))
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))
        self.flipped = self.rng.random(len(x)) < 0.5  # this epoch's side of each image

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __getitem__(self, i: int):
        idx = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
        x = self.x[idx]
        return (augment(x, self.rng, flip=self.flipped[idx]) if self.augmented else x), self.y[idx]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))
        self.flipped = ~self.flipped
