"""Decoding encoded images (JPEG/PNG bytes, as received) into the model's input pixels."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class Preprocessing:
    """How bytes become model input; stored in the model card so scoring repeats it.

    Images of another size are resized with ``resample``; any mode (grey, RGBA, palette)
    is converted to RGB. Pixels stay uint8: scaling to [0, 1] happens inside the model.
    """

    height: int = 32
    width: int = 32
    mode: str = "RGB"
    resample: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**{k: d[k] for k in ("height", "width", "mode", "resample") if k in d})


# Largest image decoded, in pixels (a 40-megapixel photo; about 120 MB of RGB). The size
# is read from the header first: a 48 KB PNG can claim 20000 x 20000 pixels (1.2 GB).
MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; scoring turns it into an error row."""


def decode_image(data: bytes, prep: Preprocessing) -> np.ndarray:
    """One encoded image -> uint8 array of shape (height, width, 3).

    JPEGs of the model's size go through simplejpeg (libjpeg-turbo, the same pixels as
    Pillow's, about 10x faster on 32x32 images: decoding otherwise costs a third of the
    model's time); everything else, and any JPEG it refuses, goes through Pillow.
    """
    if not data:
        raise ImageDecodeError("empty image bytes")
    if data[:2] == b"\xff\xd8" and prep.mode == "RGB":
        try:
            height, width, *_ = simplejpeg.decode_jpeg_header(data)
            if (height, width) == (prep.height, prep.width):
                return simplejpeg.decode_jpeg(data, colorspace="RGB")  # strict: warnings are errors
        except ValueError:
            pass  # Pillow decides, and says why
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size(img.size)
            img.load()  # decode now: a truncated file fails here, not later
            return _resized(_on_white(_eight_bit(img)).convert(prep.mode), prep)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def _check_size(size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_PIXELS:
        raise ImageDecodeError(f"image of {size[0]} x {size[1]} pixels is larger than {MAX_PIXELS:,} pixels: "
                               "not decoded (a decompression bomb, or a photo to shrink before scoring)")


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit greyscale (PNG) as 8 bits: Pillow's own conversion clips it to white."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return img
    pixels = np.asarray(img).astype(np.uint32) >> 8  # the high byte of each 16-bit sample
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    """Transparent pixels composited on white, as a viewer shows them (converting to RGB would
    keep whatever colour they hold, often black)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
        return img
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _resized(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    if img.size != (prep.width, prep.height):
        img = img.resize((prep.width, prep.height), Image.Resampling[prep.resample.upper()])
    return np.asarray(img, dtype=np.uint8)


def decode_images(blobs: list[bytes], prep: Preprocessing) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Decode many images: (pixels of the good ones, their indices, reason per bad index)."""
    out = np.empty((len(blobs), prep.height, prep.width, 3), dtype=np.uint8)
    good: list[int] = []
    bad: dict[int, str] = {}
    for i, blob in enumerate(blobs):
        try:
            out[len(good)] = decode_image(blob, prep)
            good.append(i)
        except ImageDecodeError as exc:
            bad[i] = str(exc)
    return out[: len(good)], good, bad


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless encoding for sources that hold raw pixels (the official CIFAR batches)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
