"""Model architectures by name. Each takes uint8 pixels and returns class probabilities.

- ``tutorial``: the tutorial's CNN, the baseline.
- ``fast``: a net in the spirit of the fast CIFAR-10 trainers (airbench, ResNet-9 of
  DAWNBench): a frozen 2x2 whitening convolution initialised from patch statistics, three
  conv-pool-batchnorm groups whose convolutions start as identities (dirac) and whose
  batch norms learn only a shift, at 64x the learning rate; global max pooling, a scaled
  linear head. It is trained with flip and translate augmentation, label smoothing and a
  one-cycle learning rate (``learning``), and predicts with test-time augmentation (flips
  and one-pixel shifts) built into the saved model. Only ``keras.ops``: it runs on
  TensorFlow, JAX or torch.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import layers

from batchml.data.images import Preprocessing
from batchml.errors import BatchmlError
from batchml.train.recipes import check_arch, check_setting

WHITEN_PATCH = 2  # 2x2x3 patches: 12 directions, each kept with both signs
WHITEN_EPSILON = 5e-4  # added to the patch covariance's eigenvalues (pixels in [0, 1])
BIAS_BOOST = 8.0  # batch-norm shifts are stored divided by this: SGD moves them 64x faster


def tutorial(num_classes: int, prep: Preprocessing, sample: np.ndarray | None = None,
             precision: str = "float32") -> keras.Model:
    """The tutorial's CNN: conv32-conv32-pool-dropout, conv64-conv64-pool-dropout, dense512."""
    p = {"dtype": precision}
    return keras.Sequential(
        [
            keras.Input((prep.height, prep.width, 3), dtype="uint8"),
            layers.Rescaling(1 / 255, **p),  # scaling lives in the model: scoring feeds raw pixels
            layers.Conv2D(32, 3, padding="same", activation="relu", **p),  # (H, W, 32)
            layers.Conv2D(32, 3, activation="relu", **p),  # (H-2, W-2, 32)
            layers.MaxPooling2D(**p),
            layers.Dropout(0.25, **p),
            layers.Conv2D(64, 3, padding="same", activation="relu", **p),
            layers.Conv2D(64, 3, activation="relu", **p),
            layers.MaxPooling2D(**p),  # (6, 6, 64) for 32x32 input
            layers.Dropout(0.25, **p),
            layers.Flatten(**p),
            layers.Dense(512, activation="relu", **p),
            layers.Dropout(0.5, **p),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="tutorial",
    )


@keras.saving.register_keras_serializable(package="batchml")
class HorizontalFlip(layers.Layer):
    """Mirrors images left-right (NHWC): the second view of flip test-time augmentation."""

    def call(self, x):
        return keras.ops.flip(x, axis=2)


@keras.saving.register_keras_serializable(package="batchml")
class Translate(layers.Layer):
    """Shifts images by (dy, dx) pixels, the vacated border filled by reflection."""

    def __init__(self, dy: int, dx: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dy, self.dx = dy, dx

    def call(self, x):
        p = max(abs(self.dy), abs(self.dx))
        h, w = x.shape[1], x.shape[2]
        padded = keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
        return padded[:, p - self.dy: p - self.dy + h, p - self.dx: p - self.dx + w, :]

    def get_config(self) -> dict:
        return {**super().get_config(), "dy": self.dy, "dx": self.dx}


def _torch_default(seed=None) -> keras.initializers.Initializer:
    """PyTorch's default initialisation, uniform within 1/sqrt(fan-in), as in airbench: a
    third of the variance of He-uniform, which sets how far the early steps turn the weights.
    Made per layer: an initializer draws its seed when made, after ``set_random_seed``."""
    return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform", seed=seed)


@keras.saving.register_keras_serializable(package="batchml")
class Dirac(keras.initializers.Initializer):
    """A convolution kernel (kh, kw, in, out) whose first ``min(in, out)`` filters pass their
    input channel through unchanged (a 1 at the centre), the others drawn as PyTorch's
    default (uniform within 1/sqrt(fan-in)). Each group then starts near an identity: an
    implicit residual connection, which lets a plain stack of convolutions train fast."""

    def __init__(self, seed=None) -> None:
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        base = _torch_default(self.seed)(shape, dtype)
        n = min(cin, cout)
        identity = np.zeros(shape, np.float32)
        identity[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1
        random = np.ones(shape, np.float32)
        random[..., :n] = 0
        return base * keras.ops.convert_to_tensor(random, dtype) + keras.ops.convert_to_tensor(identity, dtype)

    def get_config(self) -> dict:
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="batchml")
class Shift(layers.Layer):
    """Adds a learnt per-channel shift (the batch norm's beta) stored divided by ``boost``:
    a gradient step on the stored value moves the shift ``boost**2`` times as far, so the
    shifts learn faster than the weights without an optimizer of their own."""

    def __init__(self, boost: float = BIAS_BOOST, **kwargs) -> None:
        super().__init__(**kwargs)
        self.boost = boost

    def build(self, input_shape) -> None:
        self.stored = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="stored")

    def call(self, x):
        return x + keras.ops.cast(self.stored * self.boost, x.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "boost": self.boost}


def whitening_weights(pixels: np.ndarray, epsilon: float = WHITEN_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (2, 2, 3, 24) and bias (24,) that map each 2x2 patch of ``pixels`` (uint8 NHWC)
    to its coordinates in the patch covariance's eigenbasis, scaled to unit variance:
    every filter and its negation, so the activation after it keeps both signs."""
    x = pixels.astype(np.float32) / 255
    k = WHITEN_PATCH
    patches = np.stack([x[:, i:i + x.shape[1] - k + 1, j:j + x.shape[2] - k + 1]
                        for i in range(k) for j in range(k)], axis=3)  # (N, H', W', k*k, 3)
    patches = patches.reshape(-1, k * k * 3).astype(np.float64)
    mean = patches.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches, rowvar=False))
    w = eigenvectors / np.sqrt(eigenvalues + epsilon)  # column d: one whitened direction
    w = np.concatenate([w, -w], axis=1)
    kernel = w.reshape(k, k, 3, -1).astype(np.float32)  # the patch order above is (row, col, channel)
    return kernel, (-(mean @ w)).astype(np.float32)


def _norm(x, p: dict):
    """Batch norm with a shift but no scale (airbench's choice), the shift learning fast;
    momentum 0.6: in a short training the statistics must follow the weights closely."""
    x = layers.BatchNormalization(momentum=0.6, epsilon=1e-5, center=False, scale=False, **p)(x)
    return Shift(**p)(x)


def _conv_group(x, width: int, activation: str, p: dict):
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=Dirac(), **p)(x)
    x = layers.MaxPooling2D(**p)(x)
    x = layers.Activation(activation, **p)(_norm(x, p))
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=Dirac(), **p)(x)
    return layers.Activation(activation, **p)(_norm(x, p))


def fast(num_classes: int, prep: Preprocessing, sample: np.ndarray | None = None, width: int = 32,
         dropout: float = 0.0, activation: str = "relu", precision: str = "float32") -> keras.Model:
    """The fast net's trunk (no test-time augmentation: see ``with_tta``).

    ``width``: channels of the first group; the next two have 4x (airbench94: 64).
    ``activation``: one of ``batchml.train.recipes.ACTIVATIONS``.
    ``sample``: uint8 training images for the whitening layer; without it the layer is
    left at its random initialisation (tests of shape only).
    ``precision``: a Keras dtype policy; ``mixed_bfloat16`` computes in bfloat16 with
    float32 weights (the probabilities stay float32).
    """
    check_setting("activation", activation)
    p = {"dtype": precision}
    inputs = keras.Input((prep.height, prep.width, 3), dtype="uint8")
    # whitening in float32 whatever the precision: its large coefficients of opposite signs
    # cancel, and in bfloat16 their rounding would swamp the fine-detail directions
    f32 = {"dtype": "float32"}
    x = layers.Rescaling(1 / 255, **f32)(inputs)
    whiten = layers.Conv2D(2 * WHITEN_PATCH ** 2 * 3, WHITEN_PATCH, name="whiten", trainable=False, **f32)
    x = layers.Activation(activation, **f32)(whiten(x))
    for w in (width, 4 * width, 4 * width):
        x = _conv_group(x, w, activation, p)
    x = layers.GlobalMaxPooling2D(**p)(x)
    if dropout:
        x = layers.Dropout(dropout, **p)(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=_torch_default(), **p)(x)
    x = layers.Rescaling(1 / 9, **p)(x)  # small logits at the start: training is stabler
    outputs = layers.Activation("softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="fast")
    if sample is not None:
        whiten.set_weights(list(whitening_weights(sample)))
    return model


def with_tta(trunk: keras.Model, mode: str) -> keras.Model:
    """The model that is saved: the trunk's probabilities averaged over several views.

    ``flip``: the image and its mirror (2 passes of the trunk per image);
    ``flip-translate``: those two weighted 1/4 each, and both shifted by one pixel up-left
    and down-right weighted 1/8 each (6 passes; airbench's test-time augmentation).
    """
    if mode == "none":
        return trunk
    check_setting("tta", mode)
    inputs = keras.Input(trunk.input_shape[1:], dtype="uint8")

    def both(x):
        return layers.Average()([trunk(x), trunk(HorizontalFlip()(x))])

    outputs = both(inputs)
    if mode == "flip-translate":
        outputs = layers.Average()([outputs, layers.Average()([both(Translate(d, d)(inputs)) for d in (-1, 1)])])
    return keras.Model(inputs, outputs, name=f"{trunk.name}_tta")


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {"tutorial": tutorial, "fast": fast}


def build(arch: str, num_classes: int, prep: Preprocessing, **options) -> keras.Model:
    """``options``: ``sample`` (training images, for nets initialised from data), ``width``, ``dropout``."""
    check_arch(arch)  # the architectures are the recipes' keys
    try:
        return ARCHITECTURES[arch](num_classes, prep, **{k: v for k, v in options.items() if v is not None})
    except TypeError as exc:  # an option this architecture does not have
        raise BatchmlError(f"--arch {arch}: {exc}") from exc
