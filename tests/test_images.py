import io

import numpy as np
import pytest
from PIL import Image

from batchml.data.images import (
    ImageDecodeError,
    Preprocessing,
    Received,
    decode_batch,
    decode_image,
    decode_images,
    decode_received,
    encode_png,
)

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


def _upright() -> np.ndarray:
    """An image that shows which way is up: a red top half over a blue bottom half."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:16, :, 0] = 250
    pixels[16:, :, 2] = 250
    return pixels


def _stored_turned(orientation: int = 6) -> bytes:
    """A JPEG as a camera held on its side stores it: the pixels turned a quarter anticlockwise,
    and EXIF Orientation 6 telling viewers to turn them back clockwise."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.rot90(_upright(), 1)).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation_6_is_applied_as_a_viewer_would():
    pixels, received = decode_received(_stored_turned(), PREP)
    assert np.abs(pixels.astype(int) - _upright()).mean() < 8  # red on top again
    assert received.orientation == 6 and received.format == "JPEG"


def test_raw_orientation_keeps_the_stored_pixels_and_still_records_the_tag():
    pixels, received = decode_received(_stored_turned(), PREP, raw_orientation=True)
    assert np.abs(pixels.astype(int) - np.rot90(_upright(), 1)).mean() < 8  # red on the left, as stored
    assert received.orientation == 6


def test_images_without_exif_record_no_orientation():
    jpeg = encoded(_upright(), "JPEG")
    assert decode_received(jpeg, PREP)[1].orientation == 0
    assert decode_received(encode_png(_upright()), PREP)[1] == Received(32, 32, "RGB", "PNG", 0)


def test_decode_batch_keeps_what_each_good_image_was():
    grey = encoded(np.full((40, 30), 7, np.uint8), "PNG")
    batch = decode_batch([grey, b"junk", _stored_turned()], PREP, measure=True)
    assert batch.good == [0, 2] and list(batch.bad) == [1]
    first, second = batch.received
    assert (first.width, first.height, first.mode, first.format) == (30, 40, "L", "PNG")
    assert first.properties is not None and second.properties is None  # measured before resizing
    assert second.orientation == 6
