"""The faults of benchmarks/diagnosis.py: what an upstream pipeline, a camera, a replayed batch, a
feed of foreign images or a labelling change does to a night's images, each with the cause an
alert should name first.

Every fault maps a list of encoded images (and labels) to the night's encoded images (and labels).
Pixel faults decode, change the 32x32 pixels and re-encode as JPEG at quality 75, as the source
archive is; encoding faults change how the bytes are made; the others change which images come.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from corruptions import CORRUPTIONS
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

QUALITY = 75  # the archive's JPEG quality


def decode(blobs: list[bytes]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((32, 32))) for b in blobs])


def encode(pixels: np.ndarray, fmt: str = "JPEG", quality: int = QUALITY, mode: str = "RGB") -> list[bytes]:
    out = []
    for img in pixels:
        buf = io.BytesIO()
        picture = Image.fromarray(img).convert(mode)
        picture.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# -- pixel faults (uint8 (N, 32, 32, 3) in and out) ---------------------------------------------------


def _corruption(name: str, severity: int = 3):
    return lambda x, rng: CORRUPTIONS[name](x, severity, rng)


def dark(x, rng):
    return _clip(x * 0.35)


def colour_cast(x, rng):
    return _clip(x * np.array([1.45, 1.0, 0.55]))


def channel_swap(x, rng):
    return x[..., ::-1].copy()


def dead_channel(x, rng):
    out = x.copy()
    out[..., 1] = 0
    return out


def rotate_90(x, rng):
    return np.rot90(x, 1, axes=(1, 2)).copy()


def upside_down(x, rng):
    return x[:, ::-1].copy()


def occlusion(x, rng):
    out = x.copy()
    for img in out:
        r, c = rng.integers(0, 14, 2)
        img[r:r + 18, c:c + 18] = 0
    return out


def vignette(x, rng):
    yy, xx = np.mgrid[:32, :32]
    fall = 1 - 0.9 * (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / (2 * 15.5**2)) ** 0.8
    return _clip(x * fall[None, :, :, None])


PIXEL_FAULTS: dict[str, Callable] = {
    "blur": _corruption("gaussian_blur"), "noise": _corruption("gaussian_noise"),
    "low_contrast": _corruption("contrast"), "overexposed": _corruption("brightness"), "dark": dark,
    "fog": _corruption("fog"), "pixelate": _corruption("pixelate"), "colour_cast": colour_cast,
    "channel_swap": channel_swap, "dead_channel": dead_channel, "rotate_90": rotate_90,
    "upside_down": upside_down, "occlusion": occlusion, "vignette": vignette,
}


# -- encoding faults (encoded images in and out) --------------------------------------------------------


def grayscale(blobs, rng):
    return encode(decode(blobs), mode="L")


def heavy_jpeg(blobs, rng):
    return encode(decode(blobs), quality=8)


def downscaled(blobs, rng):  # a camera set to a lower resolution: 16x16 images arrive
    small = np.stack([np.asarray(Image.fromarray(p).resize((16, 16), Image.BILINEAR)) for p in decode(blobs)])
    return encode(small)


def upscaled(blobs, rng):  # 96x96 images of the same scenes: the upstream resizer changed
    big = np.stack([np.asarray(Image.fromarray(p).resize((96, 96), Image.BICUBIC)) for p in decode(blobs)])
    return encode(big, quality=90)


ENCODING_FAULTS: dict[str, Callable] = {"grayscale": grayscale, "heavy_jpeg": heavy_jpeg,
                                        "downscaled": downscaled, "upscaled": upscaled}


# -- images of no CIFAR-10 class ------------------------------------------------------------------------


def generated_images(n: int, rng: np.random.Generator) -> list[bytes]:
    """Images of no CIFAR-10 class: shapes on gradients, smooth colour fields, stripes and
    checkerboards, a third each."""
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            top, bottom = rng.integers(0, 256, (2, 3))
            grad = np.linspace(0, 1, 32)[:, None, None]
            base = _clip(top * (1 - grad) + bottom * grad) * np.ones((32, 32, 3), np.uint8)
            img = Image.fromarray(base.astype(np.uint8))
            draw = ImageDraw.Draw(img)
            for _ in range(rng.integers(1, 4)):
                x0, y0 = rng.integers(0, 24, 2)
                x1, y1 = x0 + rng.integers(6, 20), y0 + rng.integers(6, 20)
                fill = tuple(int(v) for v in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
            pixels = np.asarray(img)
        elif kind == 1:
            field = gaussian_filter(rng.normal(0, 1, (32, 32, 3)), sigma=(rng.uniform(1.5, 5), rng.uniform(1.5, 5), 0))
            pixels = _clip((field - field.min()) / (np.ptp(field) + 1e-9) * 255)
        else:
            yy, xx = np.mgrid[:32, :32]
            freq, angle = rng.uniform(0.2, 1.2), rng.uniform(0, np.pi)
            wave = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
            if rng.random() < 0.5:
                wave = np.sign(wave * np.sin(freq * (xx * np.sin(angle) - yy * np.cos(angle))))
            a, b = rng.integers(0, 256, (2, 3))
            pixels = _clip(a + (b - a) * (wave[..., None] + 1) / 2)
        out += encode(pixels[None])
    return out


IMAGES_CHANGED = ("input properties", "novel images")  # either says: the images are not what they were


@dataclass(frozen=True)
class Fault:
    """A fault night's kind and the causes the first alert may name (``batchml.monitoring``'s causes),
    the first of them the one it should name."""

    name: str
    causes: tuple[str, ...]

    @property
    def cause(self) -> str:
        return self.causes[0]


def fault_list() -> list[Fault]:
    # a broken camera or pipeline changes the images: its properties lead, the novelty says the same;
    # images of no class are the feed's content: novelty leads
    out = [Fault(n, IMAGES_CHANGED) for n in PIXEL_FAULTS]
    out += [Fault(n, IMAGES_CHANGED) for n in ENCODING_FAULTS]
    out += [Fault("replayed_batch", ("duplicates",)), Fault("partly_duplicated", ("duplicates",)),
            Fault("near_duplicates", ("duplicates",)), Fault("no_class_images", ("novel images",)),
            Fault("labels_changed", ("class performance",)), Fault("class_mix", ("class mix",))]
    return out
