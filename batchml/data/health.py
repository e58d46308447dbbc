"""Input health: what each image is, measured from its bytes and its decoded pixels before
preprocessing, and the fixed-bin histograms that fold it per partition (``PartitionStats``).

A camera that turns grey, a pipeline that delivers thumbnails or re-encodes at low quality, a
feed that starts sending PNGs: each moves one of these properties before it moves the model's
outputs. Every property has bin edges declared once, here, so histograms add up exactly across
partitions, runs and the training split the card keeps as the reference
(``batchml.reference.health_reference``).

Hashes for duplicates: a 64-bit content hash of the bytes (exact duplicates) and a 64-bit
difference hash (dHash) of the decoded model input (near duplicates: a re-encoded or resized
copy differs in a few bits; compare with ``hamming``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from batchml.data.images import Received

# -- the properties and their bins ---------------------------------------------------------------

# per image, in this order; the first four from the bytes and header, the rest from the pixels
PROPERTIES = ("width", "height", "aspect", "file_size",
              "brightness", "contrast", "saturation", "colourfulness", "sharpness", "clipped",
              "top_bottom", "edge_direction")
PIXEL_PROPERTIES = PROPERTIES[4:]
UNITS = {
    "width": "px", "height": "px",  # as encoded, before any EXIF turn
    "aspect": "width / height",
    "file_size": "bytes",
    "brightness": "mean luma, 0-1",
    "contrast": "luma standard deviation, 0-1",
    "saturation": "mean HSV saturation, 0-1",
    "colourfulness": "Hasler-Suesstrunk M on 0-1 pixels",
    "sharpness": "variance of the luma Laplacian, grey levels squared",
    "clipped": "share of pixels with a channel at 0 or 255",
    # a turned or flipped camera moves these two alone: skies are above, horizons lie flat
    "top_bottom": "mean luma of the top third minus the bottom third, -1 to 1",
    "edge_direction": "log2 of horizontal over vertical gradient energy",
}
HEALTH_BINS = 24  # bins per property; the first and last are open-ended (values beyond fall in them)
# image sides in px: CIFAR's 32 alone in its bin, so a feed that changes size moves a whole bin
_SIDES = np.array([0, 1.5, 4, 8, 12, 16, 20, 24, 28, 31.5, 32.5, 40, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                   1024, 2048, 4096, 8192], np.float64)
HEALTH_EDGES = np.stack([  # (P, HEALTH_BINS + 1), ascending; bin b holds edges[b] <= value < edges[b + 1]
    _SIDES,  # width
    _SIDES,  # height
    2.0 ** np.linspace(-3, 3, HEALTH_BINS + 1),  # aspect: 1/8 .. 8, 1.0 an edge
    np.concatenate([[0.0], np.geomspace(64, 64e6, HEALTH_BINS)]),  # file size: 64 B .. 64 MB
    np.linspace(0, 1, HEALTH_BINS + 1),  # brightness
    np.linspace(0, 0.48, HEALTH_BINS + 1),  # contrast (0.5 at most: half black, half white)
    np.linspace(0, 1, HEALTH_BINS + 1),  # saturation
    np.linspace(0, 0.72, HEALTH_BINS + 1),  # colourfulness (0.3 is already vivid)
    np.concatenate([[0.0], np.geomspace(1, 1e5, HEALTH_BINS)]),  # sharpness: blur reads low
    np.concatenate([[0.0], np.geomspace(1e-3, 1, HEALTH_BINS)]),  # clipped share
    np.linspace(-0.48, 0.48, HEALTH_BINS + 1),  # top minus bottom luma
    np.linspace(-3, 3, HEALTH_BINS + 1),  # edge direction
])
MEASURED_SIDE = 512  # pixel properties of larger images are measured on them reduced to this side

# categorical properties as received, each counted per value
MODES = ("RGB", "L", "RGBA", "LA", "P", "CMYK", "I;16", "other")  # PIL modes; 16-bit variants as I;16
CHANNELS = (1, 2, 3, 4)  # channels of the mode as received
ORIENTATIONS = 9  # EXIF orientation tag 1-8; 0: none or invalid
FORMATS = ("JPEG", "PNG", "other")
_MODE_CODE = {m: i for i, m in enumerate(MODES)} | {"I;16B": 6, "I;16L": 6, "I;16N": 6, "I": 6}
_MODE_CHANNELS = {"L": 1, "P": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "I;16N": 1, "I": 1, "F": 1, "1": 1,
                  "LA": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "CMYK": 4}


# -- per row -------------------------------------------------------------------------------------


@dataclass
class InputHealth:
    """The health of G decoded rows, aligned with the predictions."""

    values: np.ndarray  # (G, P) float64, PROPERTIES order
    mode: np.ndarray  # (G,) int64 index into MODES
    channels: np.ndarray  # (G,) int64 index into CHANNELS
    orientation: np.ndarray  # (G,) int64 EXIF tag, 0 without one
    format: np.ndarray  # (G,) int64 index into FORMATS
    content_hash: np.ndarray  # (G,) uint64 of the encoded bytes
    perceptual_hash: np.ndarray  # (G,) uint64 dHash of the model input

    def take(self, rows: np.ndarray) -> InputHealth:
        """The rows selected by an index or mask array."""
        return InputHealth(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def counts(self) -> dict[str, np.ndarray]:
        """The per-partition counts, as ``PartitionStats`` names them."""
        return {
            "health_hist": histograms(self.values),
            "mode_counts": np.bincount(self.mode, minlength=len(MODES)),
            "channel_counts": np.bincount(self.channels, minlength=len(CHANNELS)),
            "orientation_counts": np.bincount(self.orientation, minlength=ORIENTATIONS),
            "format_counts": np.bincount(self.format, minlength=len(FORMATS)),
        }


def measure(blobs: list[bytes], pixels: np.ndarray, received: list[Received]) -> InputHealth:
    """The health of decoded images: ``blobs`` their bytes, ``pixels`` (G, H, W, 3) their model
    input, ``received`` (``batchml.data.images.Received``) what each was before preprocessing."""
    g = len(received)
    values = np.empty((g, len(PROPERTIES)))
    values[:, 0] = [r.width for r in received]
    values[:, 1] = [r.height for r in received]
    values[:, 2] = values[:, 0] / np.maximum(values[:, 1], 1)
    values[:, 3] = [len(b) for b in blobs]
    resized = [i for i, r in enumerate(received) if r.properties is not None]
    values[:, 4:], hashes = _pixels_measured(pixels)  # as decoded, for the images of the model's size
    for i in resized:  # measured before resizing
        values[i, 4:] = received[i].properties
    return InputHealth(
        values=values,
        mode=np.array([_MODE_CODE.get(r.mode, len(MODES) - 1) for r in received], np.int64),
        channels=np.array([_MODE_CHANNELS.get(r.mode, 3) - 1 for r in received], np.int64),
        orientation=np.array([r.orientation for r in received], np.int64),
        format=np.array([FORMATS.index(r.format) if r.format in FORMATS else 2 for r in received], np.int64),
        content_hash=content_hashes(blobs),
        perceptual_hash=hashes,
    )


CHUNK = 128  # images measured at once: arrays that stay in cache, which makes it about twice as fast


def pixel_properties(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 8) float64: brightness, contrast, saturation, colourfulness,
    sharpness, clipped, top_bottom, edge_direction (``PIXEL_PROPERTIES``), vectorised over the batch."""
    return _pixels_measured(pixels)[0]


def dhash(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N,) uint64 difference hashes (Krawetz): luma averaged into 8 x 9
    blocks, one bit per horizontal neighbour pair (left brighter than right). A re-encoded or
    rescaled copy flips a few of the 64 bits; an unrelated image about half."""
    return _pixels_measured(pixels)[1]


def _pixels_measured(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixel properties (N, 8), dHashes (N,)), in chunks of ``CHUNK`` images."""
    if len(pixels) == 0:
        return np.zeros((0, len(PIXEL_PROPERTIES))), np.zeros(0, np.uint64)
    parts = [_chunk_measured(pixels[i: i + CHUNK]) for i in range(0, len(pixels), CHUNK)]
    return np.concatenate([p for p, _ in parts]), np.concatenate([h for _, h in parts])


def _chunk_measured(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = pixels.shape[:3]
    planes = np.ascontiguousarray(pixels.reshape(n, h * w, 3).transpose(2, 0, 1))  # (3, N, HW) uint8
    hi8 = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    lo8 = np.minimum(np.minimum(planes[0], planes[1]), planes[2])
    r, g, b = planes.astype(np.float32)  # 0-255
    luma = 0.299 * r + 0.587 * g + 0.114 * b  # (N, HW), ITU-R BT.601
    out = np.empty((n, len(PIXEL_PROPERTIES)))
    mean, var = _mean_var(luma)
    out[:, 0], out[:, 1] = mean / 255, np.sqrt(var) / 255
    out[:, 2] = ((hi8 - lo8).astype(np.float32) / np.maximum(hi8, 1)).mean(axis=1)  # HSV saturation; 0 on black
    rg_mean, rg_var = _mean_var(r - g)  # opponent colour axes (Hasler and Suesstrunk 2003)
    yb_mean, yb_var = _mean_var(0.5 * (r + g) - b)
    out[:, 3] = (np.sqrt(rg_var + yb_var) + 0.3 * np.hypot(rg_mean, yb_mean)) / 255
    luma = luma.reshape(n, h, w)
    out[:, 4] = _laplacian_variance(luma)
    out[:, 5] = np.count_nonzero((lo8 == 0) | (hi8 == 255), axis=1) / (h * w)
    third = max(h // 3, 1)
    out[:, 6] = (luma[:, :third].mean(axis=(1, 2)) - luma[:, h - third:].mean(axis=(1, 2))) / 255
    out[:, 7] = _edge_direction(luma)
    return out, _dhash(luma)


def _edge_direction(luma: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N,): log2 of the energy of horizontal over vertical luma differences; 0 for
    images under 2 px a side."""
    if luma.shape[1] < 2 or luma.shape[2] < 2:
        return np.zeros(len(luma))
    across = np.square(np.diff(luma, axis=2)).mean(axis=(1, 2))
    down = np.square(np.diff(luma, axis=1)).mean(axis=(1, 2))
    return np.log2((across + 1.0) / (down + 1.0))


def _mean_var(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and variance of (N, M) float32, from the sum and the sum of squares: one pass
    each, in float32 (a float64 cast would cost more than the rest of the measuring)."""
    m = a.shape[1]
    mean = a.sum(axis=1) / m
    return mean.astype(np.float64), np.maximum(np.einsum("ij,ij->i", a, a) / m - mean * mean, 0.0).astype(np.float64)


def _laplacian_variance(luma: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N,): variance of the 4-neighbour Laplacian (Pech-Pacheco et al. 2000): an
    image blurred or upscaled from fewer pixels reads low. 0 for images under 3 px a side."""
    if luma.shape[1] < 3 or luma.shape[2] < 3:
        return np.zeros(len(luma))
    lap = (luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:]
           - 4 * luma[:, 1:-1, 1:-1])
    return _mean_var(lap.reshape(len(lap), -1))[1]


def _dhash(luma: np.ndarray) -> np.ndarray:
    """(N, H, W) luma -> (N,) uint64: 8 x 9 block means (two small matrix products), their logarithm
    less its best quadratic surface, then the bits. The surface takes out what lighting lays over a
    whole picture: vignetting (a factor falling to the corners, a sum in logarithms) set most bits of
    the plain hash alike, so unrelated vignetted images read as near copies (358 pairs among 2,000
    CIFAR-10 test images, against 3 here; a JPEG re-encoding stays within 6 bits for 99%, 97% plain)."""
    n, h, w = luma.shape
    blocks = _averaging(h, 8).T @ luma @ _averaging(w, 9)  # (N, 8, 9)
    blocks = (np.log(blocks.reshape(n, 72) + 8.0) @ _detrending()).reshape(n, 8, 9)
    bits = (blocks[:, :, :-1] > blocks[:, :, 1:]).reshape(n, 64)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


@lru_cache(maxsize=1)
def _detrending() -> np.ndarray:
    """(72, 72) float32: the residual of a least-squares fit of 1, y, x, y^2, x^2, xy over the 8 x 9 blocks."""
    y, x = np.mgrid[:8, :9].astype(np.float64)
    y, x = ((y - 3.5) / 3.5).ravel(), ((x - 4) / 4).ravel()
    design = np.stack([np.ones(72), y, x, y * y, x * x, y * x], axis=1)
    return (np.eye(72) - design @ np.linalg.pinv(design)).T.astype(np.float32)


@lru_cache(maxsize=16)
def _averaging(size: int, blocks: int) -> np.ndarray:
    """(size, blocks) float32: column b averages the b-th of ``blocks`` near-equal runs of ``size``
    (a run shorter than one pixel, for tiny images, takes the nearest pixel)."""
    edges = np.linspace(0, size, blocks + 1)
    out = np.zeros((size, blocks), np.float32)
    for b in range(blocks):
        lo = min(int(np.rint(edges[b])), size - 1)
        hi = max(int(np.rint(edges[b + 1])), lo + 1)
        out[lo:hi, b] = 1 / (hi - lo)
    return out


def content_hashes(blobs: list[bytes]) -> np.ndarray:
    """(N,) uint64: the first 8 bytes of BLAKE2b over each image's bytes as received."""
    return np.array([int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "big") for b in blobs],
                    dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between 64-bit hashes (broadcasting): near duplicates differ in few."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))


# -- histograms ----------------------------------------------------------------------------------


def histograms(values: np.ndarray) -> np.ndarray:
    """(G, P) property values -> (P, HEALTH_BINS) counts on ``HEALTH_EDGES``; values beyond the
    outer edges count in the outer bins, NaN in the first."""
    out = np.zeros((len(PROPERTIES), HEALTH_BINS), np.int64)
    for p in range(len(PROPERTIES)):
        b = np.searchsorted(HEALTH_EDGES[p], np.nan_to_num(values[:, p], nan=-np.inf), side="right") - 1
        out[p] = np.bincount(np.clip(b, 0, HEALTH_BINS - 1), minlength=HEALTH_BINS)
    return out


def quantile(hist: np.ndarray, prop: str, q: float) -> float | None:
    """The ``q`` quantile of ``prop`` read from its histogram row (``hist``: (HEALTH_BINS,) or the
    whole (P, HEALTH_BINS)), linear inside the bin; the open last bin reads as its lower edge.
    None for an empty histogram. For messages such as "saturation: median 0.01 against 0.19"."""
    p = PROPERTIES.index(prop)
    counts = np.asarray(hist, np.float64)
    counts = counts[p] if counts.ndim == 2 else counts
    total = counts.sum()
    if total <= 0:
        return None
    cumulative = np.cumsum(counts) / total
    b = min(int(np.searchsorted(cumulative, q, side="left")), HEALTH_BINS - 1)
    lo, hi = HEALTH_EDGES[p][b], HEALTH_EDGES[p][b + 1]
    if b == HEALTH_BINS - 1:
        return float(lo)
    before = cumulative[b - 1] if b else 0.0
    inside = (q - before) / max(cumulative[b] - before, 1e-12)
    return float(lo + min(max(inside, 0.0), 1.0) * (hi - lo))
