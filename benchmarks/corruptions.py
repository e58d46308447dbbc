"""Image corruptions in the manner of CIFAR-10-C (Hendrycks and Dietterich, 2019), at three
severities each, for the shift-detection benchmark. Input and output: uint8 (N, 32, 32, 3)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

SEVERITIES = (1, 2, 3)


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _each(x: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(img))) for img in x])


def gaussian_blur(x, s, rng):
    return _clip(gaussian_filter(x.astype(np.float32), sigma=(0, *(2 * [(0.5, 0.8, 1.2)[s - 1]]), 0)))


def gaussian_noise(x, s, rng):
    return _clip(x + rng.normal(0, (6, 12, 22)[s - 1], x.shape))


def shot_noise(x, s, rng):
    lam = (120, 50, 20)[s - 1]  # photons at full scale
    return _clip(rng.poisson(x / 255.0 * lam) / lam * 255.0)


def impulse_noise(x, s, rng):
    frac = (0.005, 0.015, 0.04)[s - 1]
    out, hit = x.copy(), rng.random(x.shape) < frac
    out[hit] = rng.choice([0, 255], hit.sum()).astype(np.uint8)
    return out


def contrast(x, s, rng):
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _clip((x - mean) * (0.7, 0.45, 0.3)[s - 1] + mean)


def brightness(x, s, rng):
    return _clip(x.astype(np.float32) + (25, 50, 80)[s - 1])


def jpeg(x, s, rng):
    def encode(img):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=(40, 20, 10)[s - 1])
        return Image.open(io.BytesIO(buf.getvalue()))
    return _each(x, encode)


def pixelate(x, s, rng):
    side = (24, 18, 13)[s - 1]
    return _each(x, lambda img: img.resize((side, side), Image.BOX).resize((32, 32), Image.NEAREST))


def fog(x, s, rng):
    field = gaussian_filter(rng.normal(0, 1, (len(x), 32, 32)), sigma=(0, 4, 4))
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    strength = (0.25, 0.45, 0.65)[s - 1]
    return _clip(x * (1 - strength) + (field[..., None] * 0.5 + 0.5) * 255 * strength)


CORRUPTIONS = {f.__name__: f for f in (gaussian_blur, gaussian_noise, shot_noise, impulse_noise, contrast,
                                       brightness, jpeg, pixelate, fog)}
