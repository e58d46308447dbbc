"""Input health: per-image properties, fixed-bin histograms, hashes, and the training reference."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from batchml.data.health import (
    FORMATS,
    HEALTH_BINS,
    HEALTH_EDGES,
    MODES,
    PIXEL_PROPERTIES,
    PROPERTIES,
    content_hashes,
    dhash,
    hamming,
    histograms,
    measure,
    pixel_properties,
    quantile,
)
from batchml.data.images import Preprocessing, decode_batch
from batchml.data.ingest import ingest
from batchml.reference import health_reference, health_stats

PREP = Preprocessing()
RNG = np.random.default_rng(0)


def prop(values: np.ndarray, name: str) -> np.ndarray:
    return values[:, PIXEL_PROPERTIES.index(name)]


def encoded(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **options)
    return buf.getvalue()


def photo(seed: int, size: int = 32) -> np.ndarray:
    """A smooth colour image, as photos are: random colours at 5 x 5 points, interpolated."""
    rng = np.random.default_rng(seed)
    points = Image.fromarray(rng.integers(20, 236, (5, 5, 3)).astype(np.uint8))
    return np.asarray(points.resize((size, size), Image.Resampling.BICUBIC))


def test_brightness_contrast_and_clipping_of_uniform_and_split_images():
    grey = np.full((1, 32, 32, 3), 51, np.uint8)
    split = np.zeros((1, 32, 32, 3), np.uint8)
    split[:, 16:] = 255
    values = pixel_properties(np.concatenate([grey, split]))
    assert np.allclose(prop(values, "brightness"), [0.2, 0.5], atol=1e-6)
    assert np.allclose(prop(values, "contrast"), [0.0, 0.5], atol=1e-6)
    assert np.allclose(prop(values, "clipped"), [0.0, 1.0])


def test_grey_images_have_no_saturation_or_colourfulness_and_vivid_ones_do():
    grey = np.repeat(RNG.integers(0, 256, (1, 32, 32, 1), dtype=np.uint8), 3, axis=3)
    values = pixel_properties(np.concatenate([grey, photo(1)[None]]))
    assert np.allclose(prop(values, "saturation")[0], 0) and np.allclose(prop(values, "colourfulness")[0], 0)
    assert prop(values, "saturation")[1] > 0.2 and prop(values, "colourfulness")[1] > 0.1


def test_blur_lowers_sharpness():
    sharp = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # fine detail everywhere
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(2)))
    s = prop(pixel_properties(np.stack([sharp, blurred])), "sharpness")
    assert s[1] < s[0] / 5


def test_histograms_count_every_row_once_per_property_on_the_declared_edges():
    values = np.zeros((3, len(PROPERTIES)))
    values[:, PROPERTIES.index("width")] = [32, 1e9, -5]  # beyond the edges: the outer bins
    hist = histograms(values)
    assert hist.shape == (len(PROPERTIES), HEALTH_BINS) and HEALTH_EDGES.shape == (len(PROPERTIES), HEALTH_BINS + 1)
    assert (hist.sum(axis=1) == 3).all()
    w = hist[PROPERTIES.index("width")]
    assert w[0] == 1 and w[-1] == 1 and w[np.searchsorted(HEALTH_EDGES[0], 32, side="right") - 1] == 1


def test_quantile_reads_the_median_back_from_the_histogram():
    values = np.zeros((1000, len(PROPERTIES)))
    values[:, PROPERTIES.index("saturation")] = np.linspace(0.1, 0.3, 1000)
    hist = histograms(values)
    assert quantile(hist, "saturation", 0.5) == pytest.approx(0.2, abs=0.02)
    assert quantile(np.zeros_like(hist), "saturation", 0.5) is None


def test_a_reencoded_copy_is_a_near_duplicate_and_another_image_is_not():
    a, other = photo(3), photo(4)
    copy = np.asarray(Image.open(io.BytesIO(encoded(a, "JPEG", quality=60))))
    h = dhash(np.stack([a, copy, other]))
    assert h.dtype == np.uint64
    assert hamming(h[0], h[1]) <= 4 < 16 <= hamming(h[0], h[2])


def test_vignetted_images_are_not_near_copies_of_each_other_but_a_reencoded_one_still_is():
    """A vignette (a factor falling to the corners) laid over 300 unrelated images used to set most
    bits of their hashes alike; its re-encoded copy must still be found."""
    yy, xx = np.mgrid[:32, :32]
    fall = 1 - 0.9 * (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / (2 * 15.5**2)) ** 0.8
    shaded = np.clip(np.stack([photo(100 + i) for i in range(300)]) * fall[None, :, :, None], 0, 255).astype(np.uint8)
    h = dhash(shaded)
    pairs = sum(int((hamming(h[i], h[:i]) <= 6).sum()) for i in range(1, len(h)))
    assert pairs <= 10, pairs
    copy = np.asarray(Image.open(io.BytesIO(encoded(shaded[0], "JPEG", quality=60))))
    assert hamming(h[0], dhash(copy[None])[0]) <= 6


def test_content_hashes_equal_only_for_equal_bytes():
    a, b = encoded(photo(5)), encoded(photo(6))
    h = content_hashes([a, b, a])
    assert h[0] == h[2] != h[1] and h.dtype == np.uint64


def test_measure_records_what_was_received():
    grey_jpeg = encoded(np.full((32, 32), 90, np.uint8), "JPEG")
    rgba_png = encoded(np.full((32, 32, 4), 200, np.uint8))
    big = encoded(photo(7, size=64))  # resized on the way: measured before resizing
    blobs = [grey_jpeg, rgba_png, big]
    batch = decode_batch(blobs, PREP, measure=True)
    health = measure(blobs, batch.pixels, batch.received)
    assert [MODES[m] for m in health.mode] == ["L", "RGBA", "RGB"]
    assert health.channels.tolist() == [0, 3, 2]  # 1, 4 and 3 channels
    assert [FORMATS[f] for f in health.format] == ["JPEG", "PNG", "PNG"]
    assert health.values[:, PROPERTIES.index("width")].tolist() == [32, 32, 64]
    assert health.values[:, PROPERTIES.index("file_size")].tolist() == [len(b) for b in blobs]
    before = pixel_properties(photo(7, size=64)[None])[0]
    assert np.allclose(health.values[2, 4:], before)
    counts = health.counts()
    assert counts["mode_counts"].sum() == counts["orientation_counts"][0] == 3


def test_the_training_reference_samples_every_partition_outside_the_validation_split(store, image_folders):
    ingest(store, str(image_folders), "shapes", "train", partition_size=30, verbose=False)
    entry = health_reference(store, "shapes", validation_fraction=0.2, sample=60)
    assert entry["properties"] == list(PROPERTIES) and 40 <= entry["rows"] <= 60  # 2 of 12 rows per partition
    assert np.asarray(entry["health_hist"]).sum(axis=1).tolist() == [entry["rows"]] * len(PROPERTIES)
    stats = health_stats(entry, 3)
    assert stats.has("health_hist") and stats.mode_counts[MODES.index("RGB")] == entry["rows"]
    assert health_stats(None, 3) is None and health_stats({**entry, "properties": ["width"]}, 3) is None


def test_a_turned_or_flipped_image_moves_top_bottom_and_edge_direction():
    from batchml.data.health import pixel_properties

    sky = np.zeros((1, 32, 32, 3), np.uint8)
    sky[:, :12] = 220  # bright above
    sky[:, 20:24] = 90  # a flat horizon band: edges run across, their gradients down
    upright, upside_down, turned = (pixel_properties(x)[0] for x in (sky, sky[:, ::-1], np.rot90(sky, 1, (1, 2))))
    top, edges = PIXEL_PROPERTIES.index("top_bottom"), PIXEL_PROPERTIES.index("edge_direction")
    assert upright[top] > 0.5 and upside_down[top] < -0.5 and abs(turned[top]) < 0.1
    assert upright[edges] < -3 and turned[edges] > 3
