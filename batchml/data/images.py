"""Decoding encoded images (JPEG/PNG bytes, as received) into the model's input pixels.

A photo's EXIF orientation is applied as a viewer would (``ImageOps.exif_transpose``) before
preprocessing, unless the caller keeps the raw pixels; what the image was as received (size,
mode, format, orientation tag) comes back beside the pixels for the input-health statistics
(``batchml.data.health``).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from batchml.data.health import MEASURED_SIDE, pixel_properties


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


EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2-8 mirrored and/or turned; 0 here: none or invalid
# libjpeg's colour spaces as the PIL modes they are received as
_JPEG_MODES = {"Gray": "L", "YCbCr": "RGB", "RGB": "RGB", "CMYK": "CMYK", "YCCK": "CMYK"}


@dataclass(frozen=True)
class Received:
    """An image as it arrived, before preprocessing: the encoded size (before any EXIF turn),
    PIL mode, format and EXIF orientation tag. ``properties``: its pixel properties
    (``health.pixel_properties``) where its pixels differ from the model input's (another size),
    measured before resizing; None where the model input's pixels are the decoded ones."""

    width: int
    height: int
    mode: str
    format: str  # JPEG | PNG | other
    orientation: int  # EXIF tag 1-8; 0 without one
    properties: np.ndarray | None = None


def decode_image(data: bytes, prep: Preprocessing, raw_orientation: bool = False) -> np.ndarray:
    """One encoded image -> uint8 array of shape (height, width, 3), EXIF orientation applied
    unless ``raw_orientation``."""
    return decode_received(data, prep, raw_orientation)[0]


def decode_received(data: bytes, prep: Preprocessing, raw_orientation: bool = False,
                    measure: bool = False) -> tuple[np.ndarray, Received]:
    """One encoded image -> (model input pixels (height, width, 3) uint8, what was received).
    ``measure``: compute ``Received.properties`` for images resized on the way.

    JPEGs of the model's size without EXIF go through simplejpeg (libjpeg-turbo, the same
    pixels as Pillow's, about 10x faster on 32x32 images: decoding otherwise costs a third
    of the model's time); everything else, and any JPEG it refuses, goes through Pillow.
    """
    if not data:
        raise ImageDecodeError("empty image bytes")
    if data[:2] == b"\xff\xd8" and prep.mode == "RGB" and not _has_exif(data):
        try:
            height, width, space, _ = simplejpeg.decode_jpeg_header(data)
            if (height, width) == (prep.height, prep.width):
                pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")  # strict: warnings are errors
                return pixels, Received(width, height, _JPEG_MODES.get(space, space), "JPEG", 0)
        except ValueError:
            pass  # Pillow decides, and says why
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size(img.size)
            img.load()  # decode now: a truncated file fails here, not later
            received = Received(img.width, img.height, img.mode, _format(img.format), _orientation(img, data))
            if received.orientation > 1 and not raw_orientation:
                img = ImageOps.exif_transpose(img)
            rgb = _on_white(_eight_bit(img)).convert(prep.mode)
            if measure and rgb.size != (prep.width, prep.height):
                received = _measured(received, rgb)
            return _resized(rgb, prep), received
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def _has_exif(data: bytes) -> bool:
    """Whether a JPEG may hold EXIF (an APP1 ``Exif`` segment, in the header's first 64 KB): a
    false positive only sends the image through Pillow, which reads the tag itself."""
    return b"Exif\x00\x00" in data[:65536]


def _orientation(img: Image.Image, data: bytes) -> int:
    """The EXIF orientation tag (1-8), 0 without a valid one; read only where EXIF may be, since
    parsing it costs more than decoding a 32x32 image."""
    if not (_has_exif(data) or b"eXIf" in data):  # JPEG's APP1, PNG's chunk
        return 0
    try:
        tag = img.getexif().get(EXIF_ORIENTATION, 0)
    except (SyntaxError, ValueError, OSError, TypeError):  # a damaged EXIF block: the pixels still stand
        return 0
    return tag if isinstance(tag, int) and 1 <= tag <= 8 else 0


def _format(name: str | None) -> str:
    return name if name in ("JPEG", "PNG") else "other"


def _measured(received: Received, rgb: Image.Image) -> Received:
    """``received`` with the pixel properties of ``rgb`` (RGB, before resizing), measured on the
    image reduced to at most ``MEASURED_SIDE`` pixels a side: a Laplacian over a 12-megapixel
    photo would cost more than the model."""
    factor = max(1, -(-max(rgb.size) // MEASURED_SIDE))
    small = rgb.reduce(factor) if factor > 1 else rgb
    return Received(received.width, received.height, received.mode, received.format, received.orientation,
                    pixel_properties(np.asarray(small, dtype=np.uint8)[None])[0])


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


@dataclass
class DecodedBatch:
    """Many images decoded: the good ones' model input, which they were, and why the rest failed."""

    pixels: np.ndarray  # (G, height, width, 3) uint8
    good: list[int]  # (G,) their indices among the inputs
    bad: dict[int, str]  # index -> reason
    received: list[Received]  # (G,) what each good image was as received


def decode_batch(blobs: list[bytes], prep: Preprocessing, raw_orientation: bool = False,
                 measure: bool = False) -> DecodedBatch:
    """Decode many images (``decode_received`` each); a bad one is a reason, never an exception."""
    out = np.empty((len(blobs), prep.height, prep.width, 3), dtype=np.uint8)
    good: list[int] = []
    bad: dict[int, str] = {}
    received: list[Received] = []
    for i, blob in enumerate(blobs):
        try:
            out[len(good)], info = decode_received(blob, prep, raw_orientation, measure)
            good.append(i)
            received.append(info)
        except ImageDecodeError as exc:
            bad[i] = str(exc)
    return DecodedBatch(out[: len(good)], good, bad, received)


def decode_images(blobs: list[bytes], prep: Preprocessing,
                  raw_orientation: bool = False) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Decode many images: (pixels of the good ones, their indices, reason per bad index)."""
    batch = decode_batch(blobs, prep, raw_orientation)
    return batch.pixels, batch.good, batch.bad


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless encoding for sources that hold raw pixels (the official CIFAR batches)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
