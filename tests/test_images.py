import io

import numpy as np
import pytest
from PIL import Image

from batchml.images import ImageDecodeError, Preprocessing, decode_image, decode_images, encode_png

PREP = Preprocessing()


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def test_png_decodes_to_the_exact_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_png(pixels), PREP), pixels)


def test_other_sizes_and_modes_are_resized_and_converted():
    grey = np.full((64, 48), 200, np.uint8)
    out = decode_image(encoded(grey, "JPEG"), PREP)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert abs(int(out.mean()) - 200) <= 2


def test_truncated_and_garbage_bytes_raise_decode_errors():
    jpeg = encoded(np.zeros((32, 32, 3), np.uint8), "JPEG")
    for bad in (jpeg[: len(jpeg) // 2], b"not an image", b""):
        with pytest.raises(ImageDecodeError):
            decode_image(bad, PREP)


def test_decode_images_reports_bad_indices_and_keeps_the_rest():
    good = encode_png(np.zeros((32, 32, 3), np.uint8))
    pixels, ok, bad = decode_images([good, b"junk", good], PREP)
    assert pixels.shape == (2, 32, 32, 3)
    assert ok == [0, 2] and list(bad) == [1]


def test_jpeg_fast_path_gives_pillows_pixels():
    rng = np.random.default_rng(1)
    jpeg = encoded(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "JPEG")
    pillow = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert np.array_equal(decode_image(jpeg, PREP), pillow)
