"""Novelty: cosine distance of the penultimate features to the K-th nearest training feature, over a
threshold set on the validation split; the feature model that gives probabilities and features in
one pass, and the layer that scores inside it."""

import dataclasses
import io

import numpy as np
import pytest

from batchml.errors import BatchmlError
from batchml.stats import NOVELTY_BINS
from batchml.train.novelty import NOVELTY_QUANTILE, NoveltyReference, fit_reference


def clusters(n: int, seed: int, other: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features of 3 classes around 3 directions in 16 dimensions (``other``: 3 directions no
    training class has), correlated within a class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    mix = np.random.default_rng(99).normal(size=(16, 16)) * 0.3
    centres = np.random.default_rng(97 if other else 98).normal(0, 6, (3, 16))
    return centres[labels] + rng.normal(size=(n, 16)) @ mix, labels


def sure(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Probabilities that put ``confidence`` on each row's label among 3 classes."""
    probs = np.full((len(labels), 3), (1 - confidence) / 2)
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def fit(train, val, val_labels):
    return fit_reference(train, val, sure(val_labels))


def test_the_threshold_scores_the_validation_quantile_at_one():
    train, _ = clusters(3000, 0)
    val, val_labels = clusters(1000, 1)
    ref = fit(train, val, val_labels)
    scores = ref.score(val, sure(val_labels))
    assert (scores > 1).mean() == pytest.approx(1 - NOVELTY_QUANTILE, abs=0.01)
    assert ref.validation_rate == pytest.approx((scores > 1).mean())
    assert sum(ref.validation_hist) == 1000 and len(ref.validation_hist) == NOVELTY_BINS


def test_images_unlike_the_training_features_score_above_one():
    train, _ = clusters(3000, 0)
    ref = fit(train, *clusters(1000, 1))
    far, far_labels = clusters(500, 2, other=True)
    assert (ref.score(far, sure(far_labels)) > 1).mean() > 0.95  # the model is sure of them: the neighbours tell
    near, near_labels = clusters(500, 3)
    assert (ref.score(near, sure(near_labels)) > 1).mean() < 0.1
    assert (ref.score(near, sure(near_labels, 0.34)) > 1).mean() > 0.9  # between classes: the entropy tells


def test_a_model_whose_images_sit_on_its_training_images_does_not_read_rounding_as_novel():
    """An easy dataset: validation features all but equal to training ones, probabilities all but
    certain. The float16 bank's rounding and a sliver of doubt must not make clean images novel."""
    train, labels = clusters(300, 0)
    centres = np.stack([train[labels == c].mean(axis=0) for c in range(3)])
    tight = centres[labels] + np.random.default_rng(5).normal(0, 1e-4, train.shape)
    ref = fit_reference(tight, tight[:100], sure(labels[:100], 0.999999))
    fresh = centres[labels[100:]] + np.random.default_rng(6).normal(0, 1e-3, (200, 16))
    scores = ref.score(fresh, sure(labels[100:], 0.9999))
    assert (scores >= 0).all() and (scores > 1).mean() < 0.05
    far, far_labels = clusters(100, 2, other=True)
    assert (ref.score(far, sure(far_labels)) > 1).all()  # still: what is unlike them is novel


def test_the_reference_round_trips_through_its_file_and_card_entry():
    train, _ = clusters(600, 0)
    ref = fit(train, *clusters(200, 1))
    back = NoveltyReference.from_bytes(ref.to_bytes(), ref.card_entry())
    x, x_labels = clusters(50, 4)
    assert np.allclose(back.score(x, sure(x_labels)), ref.score(x, sure(x_labels)))
    assert ref.card_entry()["method"] == "knn-pca" and ref.card_entry()["feature_dim"] == 16


def test_a_reference_fitted_before_the_projection_is_read_and_scored_as_it_was():
    train, _ = clusters(600, 0)
    exact = fit_reference(train, *clusters(200, 1)[:1], sure(clusters(200, 1)[1]), dimensions=None)
    entry = exact.card_entry()
    assert entry["method"] == "knn" and exact.axes is None
    back = NoveltyReference.from_bytes(exact.to_bytes(), entry)
    x, x_labels = clusters(50, 4)
    assert back.axes is None and np.array_equal(back.score(x, sure(x_labels)), exact.score(x, sure(x_labels)))


def wide(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """512-dimensional features with a decaying spectrum, as a CNN's penultimate layer has (a few
    strong directions, a long tail); ``shift`` moves them along directions of the tail."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.arange(1, 513) ** 0.8
    basis = np.linalg.qr(np.random.default_rng(42).normal(size=(512, 512)))[0]
    x = np.abs(rng.normal(size=(n, 512)) * scales) @ basis.T
    return x + shift * basis[:, 300:310].sum(axis=1)


def test_the_projected_bank_flags_the_images_the_exact_bank_flags():
    train, val = wide(4000, 0), wide(1000, 1)
    probs = sure(np.zeros(1000, int))
    projected, exact = fit_reference(train, val, probs), fit_reference(train, val, probs, dimensions=None)
    assert projected.bank.shape == (4000, 128) and projected.feature_dim == 512
    fresh = np.concatenate([wide(1000, 2), wide(300, 3, shift=0.5)])
    ranks = [np.argsort(np.argsort(ref.distances(fresh))) for ref in (projected, exact)]
    assert np.corrcoef(*ranks)[0, 1] > 0.99  # Spearman's
    flags = [ref.score(fresh, sure(np.zeros(1300, int))) > 1 for ref in (projected, exact)]
    assert flags[1][1000:].mean() > 0.9 and (flags[0] == flags[1]).mean() > 0.99


def test_a_projected_reference_without_its_axes_is_an_error_that_names_the_file(store):
    from batchml.layout import ModelVersion
    from batchml.train.novelty import read_novelty

    train, _ = clusters(600, 0)
    ref = fit(train, *clusters(200, 1))
    mv = ModelVersion("m", "v1")
    store.write_bytes(mv.novelty_path, NoveltyReference(ref.bank, 1.0, 1.0, 1.0, 0.0, (), 600).to_bytes())
    with pytest.raises(BatchmlError, match=r"novelty\.npz.*cannot be read"):
        read_novelty(store, mv, ref.card_entry())


def test_a_damaged_or_tampered_reference_is_an_error_that_names_the_file(store):
    """Truncated, empty, not an archive, NaNs, a card that does not match its file: each a
    BatchmlError naming novelty.npz (``doctor`` and ``score`` report it), never a traceback or
    scores that silently never fire."""
    from batchml.layout import ModelVersion
    from batchml.train.novelty import read_novelty

    train, _ = clusters(600, 0)
    ref = fit(train, *clusters(200, 1))
    mv, good, entry = ModelVersion("m", "v1"), ref.to_bytes(), ref.card_entry()
    nan_bank = ref.bank.copy()
    nan_bank[0, 0] = np.nan
    damaged = {
        "truncated": (good[: len(good) // 2], entry),
        "empty": (b"", entry),
        "flipped": (good[:200] + bytes([good[200] ^ 0xFF]) + good[201:], entry),
        "bare npy": (_npy(ref.bank), entry),
        "NaN": (dataclasses.replace(ref, bank=nan_bank).to_bytes(), entry),
        "k 0": (good, {**entry, "k": 0}),
        "threshold NaN": (good, {**entry, "threshold": float("nan")}),
        "feature_dim": (good, {**entry, "feature_dim": entry["feature_dim"] + 1}),
        "exact card": (good, {**entry, "method": "knn"}),
        "no histogram": (good, {**entry, "validation_hist": None}),
    }
    for name, (data, card) in damaged.items():
        store.write_bytes(mv.novelty_path, data)
        with pytest.raises(BatchmlError, match=r"novelty\.npz.*cannot be read"):
            read_novelty(store, mv, card)
            pytest.fail(name)
    store.write_bytes(mv.novelty_path, good)
    assert read_novelty(store, mv, entry) is not None


def test_a_non_finite_training_feature_is_left_out_of_the_bank():
    train, _ = clusters(600, 0)
    train[3, 0], train[7, 1] = np.nan, np.inf
    ref = fit(train, *clusters(200, 1))
    assert ref.train_rows == 598 and len(ref.bank) == 598 and np.isfinite(ref.bank).all()


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_a_class_held_out_of_training_reads_as_novel():
    train, labels = clusters(3000, 0)
    val, val_labels = clusters(1000, 1)
    ref = fit(train[labels != 2], val[val_labels != 2], val_labels[val_labels != 2])
    held, held_labels = clusters(600, 5)
    mine = held_labels == 2
    assert (ref.score(held[mine], sure(np.zeros(mine.sum(), int))) > 1).mean() > 0.9


@pytest.mark.slow
def test_the_layer_inside_the_model_scores_as_the_reference_does():
    from batchml.data.images import Preprocessing
    from batchml.train.architectures import build
    from batchml.train.novelty import feature_model, novelty_model, predict_features

    model = build("fast", 3, Preprocessing(), width=8)
    x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    probs, features = predict_features(feature_model(model), x)
    ref = fit_reference(features[:30], features[30:], probs[30:])
    _, inside = novelty_model(model, ref).predict_on_batch(x)
    assert np.allclose(np.asarray(inside).ravel(), ref.score(features, probs), atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("arch, tta", [("tutorial", "none"), ("fast", "flip-translate")])
def test_the_feature_model_gives_the_models_probabilities_and_its_features(arch, tta):
    from batchml.data.images import Preprocessing
    from batchml.train.architectures import build, with_tta
    from batchml.train.novelty import feature_model, predict_features

    model = with_tta(build(arch, 3, Preprocessing(), width=8) if arch == "fast" else
                     build(arch, 3, Preprocessing()), tta)
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    probs, features = predict_features(feature_model(model), x)
    assert np.allclose(probs, model.predict_on_batch(x), atol=1e-6)
    assert features.shape == (6, 512 if arch == "tutorial" else 32)


@pytest.mark.slow
def test_a_loaded_test_time_augmentation_model_gets_its_feature_model():
    import keras

    from batchml.data.images import Preprocessing
    from batchml.registry import load_model_bytes, model_bytes
    from batchml.train.architectures import build, with_tta
    from batchml.train.novelty import feature_model

    saved = model_bytes(with_tta(build("fast", 3, Preprocessing(), width=8), "flip-translate"))
    keras.backend.clear_session()  # as a fresh worker: layer names count from zero again
    loaded = load_model_bytes(saved)
    assert len(feature_model(loaded).outputs) == 2


@pytest.mark.slow
def test_the_novelty_model_scores_as_the_reference_does_in_the_same_pass():
    from batchml.data.images import Preprocessing
    from batchml.train.architectures import build
    from batchml.train.novelty import fit_novelty, novelty_model

    model = build("tutorial", 3, Preprocessing())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    ref = fit_novelty(model, x[:30], x[30:45])
    probs, novelty = novelty_model(model, ref).predict_on_batch(x[45:])  # images it was not fitted on
    _, features = predict_features_of(model, x[45:])
    assert np.allclose(probs, model.predict_on_batch(x[45:]), atol=1e-6)
    assert np.allclose(novelty, ref.score(features, probs), rtol=1e-3, atol=1e-3)


def predict_features_of(model, x):
    from batchml.train.novelty import feature_model, predict_features

    return predict_features(feature_model(model), x)


@pytest.mark.slow
def test_fit_novelty_and_attach_it_to_a_registered_version(store):
    import keras

    from batchml.data.images import Preprocessing
    from batchml.records import ModelCard
    from batchml.registry import read_card, register
    from batchml.train.architectures import build
    from batchml.train.novelty import attach_novelty, fit_novelty, read_novelty
    from tests.test_records import OLD_CARD

    model = build("tutorial", 2, Preprocessing())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    ref = fit_novelty(model, x[:48], x[48:], train_labels=rng.integers(0, 2, 48), sample=40)
    assert ref.train_rows == 40 and ref.feature_dim == 512 and ref.bank.shape == (40, 40)  # 40 rows span 40 axes
    mv = register(store, "m", b"model bytes", ModelCard.from_dict(OLD_CARD))
    assert read_card(store, mv).novelty is None and read_card(store, mv).input_health is None  # before novelty
    entry = attach_novelty(store, mv, ref)
    card = read_card(store, mv)
    assert card.novelty == entry and card.classes == OLD_CARD["classes"]
    some = rng.normal(size=(8, 512))
    probs = np.full((8, 2), 0.5)
    assert np.allclose(read_novelty(store, mv, card.novelty).score(some, probs), ref.score(some, probs))
    with pytest.raises(BatchmlError, match="already has a novelty reference"):
        attach_novelty(store, mv, ref)
    with pytest.raises(BatchmlError, match="no Dense"):
        fit_novelty(keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()]), x, x)
