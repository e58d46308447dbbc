import io

import numpy as np
import pytest
from PIL import Image

from batchml.data.images import ImageDecodeError, Preprocessing, decode_image, decode_images, encode_png

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


def _png_claiming(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG header claiming ``width`` x ``height`` pixels, followed by a scrap of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + data + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_an_error_row_not_a_crash():
    bomb = _png_claiming(20000, 20000)
    assert len(bomb) < 1000
    _, good, bad = decode_images([bomb, encode_png(np.zeros((32, 32, 3), np.uint8))], PREP)
    assert good == [1] and "decompression bomb" in bad[0]


def test_a_huge_jpeg_is_refused_from_its_header_before_decoding():
    small = encoded(np.zeros((32, 32, 3), np.uint8), "JPEG")
    sof = small.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    huge = small[:sof + 5] + (9000).to_bytes(2, "big") * 2 + small[sof + 9:]  # 243 MB of pixels
    with pytest.raises(ImageDecodeError, match=r"9000 x 9000 pixels is larger than 40,000,000"):
        decode_image(huge, PREP)


def test_a_16_bit_png_keeps_its_shades():
    shades = np.repeat(np.linspace(0, 65535, 32, dtype=np.uint16)[None, :], 32, axis=0)
    buf = io.BytesIO()
    Image.fromarray(shades).save(buf, format="PNG")  # 16-bit greyscale
    pixels = decode_image(buf.getvalue(), PREP)
    assert np.array_equal(pixels[..., 0], (shades >> 8).astype(np.uint8))
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, -1].tolist() == [255, 255, 255]
