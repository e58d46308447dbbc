"""Novelty: how unlike the training images an image is, from the model's penultimate features.

The score is the Mahalanobis distance of an image's features to the nearest class mean, with one
covariance shared by the classes (Lee et al. 2018), divided by a threshold: the validation split's
95th percentile. So 1.0 means "as far as the 5% least typical validation images", and a feed of
images of no class reads well above it while its softmax can still be confident.

The reference (class means and the whitening matrix) is fitted on a sample of the training split
when a model is trained and kept beside it (``models/<name>/vN/novelty.npz``); the card keeps the
threshold and the validation split's rate (``card.novelty``). ``fit_novelty`` fits it for a model
trained before, ``attach_novelty`` stores it with such a version.

Scoring runs ``novelty_model(model, reference)``: one pass that gives the probabilities and the
novelty, the distances computed inside the model (on the device, beside the features).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from batchml.data import datasets
from batchml.data.images import Preprocessing
from batchml.errors import BatchmlError
from batchml.stats import NOVELTY_BINS, NOVELTY_EDGES

NOVELTY_QUANTILE = 0.95  # the validation quantile that scores 1.0
TRAIN_SAMPLE = 10_000  # training images whose features set the class means and covariance
RIDGE = 1e-3  # added to the covariance's eigenvalues, as a share of their mean: few images, many features
PREDICT_BATCH = 512


@dataclass(frozen=True)
class NoveltyReference:
    """Class means and the shared covariance's whitening, with the threshold that scores 1.0."""

    means: np.ndarray  # (K', D) float32: means of the penultimate features of the classes trained on
    whitening: np.ndarray  # (D, D) float32: W with W^T Cov W = I, so distances are Euclidean after it
    threshold: float  # the Mahalanobis distance at the validation split's NOVELTY_QUANTILE
    validation_rate: float  # share of the validation split scoring above 1.0 (about 1 - NOVELTY_QUANTILE)
    validation_hist: tuple[int, ...]  # (NOVELTY_BINS,) the validation split's scores
    train_rows: int  # training images the means and covariance came from

    def whitened(self) -> tuple[np.ndarray, np.ndarray]:
        """(offset (D,), centres (K', D)): features map to ``f @ whitening - offset``, where the class
        means are ``centres``; the offset, the means' centre, keeps the numbers small in float32."""
        centres = self.means @ self.whitening
        offset = centres.mean(axis=0)
        return offset.astype(np.float32), (centres - offset).astype(np.float32)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) Mahalanobis distance to the nearest class mean."""
        offset, centres = self.whitened()
        z = np.asarray(features, np.float32) @ self.whitening - offset  # (N, D)
        squared = (np.square(z).sum(axis=1, keepdims=True) - 2 * z @ centres.T
                   + np.square(centres).sum(axis=1))  # (N, K')
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0)).astype(np.float64)

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) novelty: distance over the threshold (above 1.0: novel)."""
        return self.distances(features) / self.threshold

    def card_entry(self) -> dict:
        """What the card keeps (``card.novelty``); the arrays live in ``layout.NOVELTY_FILE``."""
        return {"method": "mahalanobis", "threshold": self.threshold, "quantile": NOVELTY_QUANTILE,
                "validation_rate": self.validation_rate, "validation_hist": list(self.validation_hist),
                "edges": NOVELTY_EDGES.tolist(), "feature_dim": int(self.means.shape[1]),
                "train_rows": self.train_rows}

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, means=self.means, whitening=self.whitening)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, entry: dict) -> NoveltyReference:
        """The reference from ``novelty.npz``'s bytes and the card's ``novelty`` entry."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            means, whitening = arrays["means"], arrays["whitening"]
        return cls(means, whitening, float(entry["threshold"]), float(entry["validation_rate"]),
                   tuple(int(c) for c in entry["validation_hist"]), int(entry.get("train_rows", 0)))


def fit_reference(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                  num_classes: int) -> NoveltyReference:
    """Class means and shared covariance from (N, D) training features and their labels; the
    threshold from the validation features."""
    f = np.asarray(train_features, np.float64)
    labels = np.asarray(train_labels, np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.zeros((num_classes, f.shape[1]))
    np.add.at(sums, labels, f)
    means = sums / np.maximum(counts, 1)[:, None]
    centred = f - means[labels]
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(f))
    eigenvalues = np.maximum(eigenvalues, 0) + RIDGE * max(eigenvalues.mean(), 1e-12)
    whitening = (eigenvectors / np.sqrt(eigenvalues)).astype(np.float32)
    # a class without training images is no nearest mean: only the others are kept
    draft = NoveltyReference(means[counts > 0].astype(np.float32), whitening, 1.0, 0.0, (), len(f))
    distances = draft.distances(val_features)
    threshold = float(np.quantile(distances, NOVELTY_QUANTILE)) if len(distances) else 1.0
    threshold = threshold if threshold > 0 else 1.0
    scores = distances / threshold
    bins = np.clip(np.searchsorted(NOVELTY_EDGES, scores, side="right") - 1, 0, NOVELTY_BINS - 1)
    return NoveltyReference(draft.means, whitening, threshold, float((scores > 1.0).mean()) if len(scores) else 0.0,
                            tuple(np.bincount(bins, minlength=NOVELTY_BINS).tolist()), len(f))


def fit_novelty(model, train_images: np.ndarray, val_images: np.ndarray,
                train_labels: np.ndarray | None = None, sample: int = TRAIN_SAMPLE, seed: int = 0) -> NoveltyReference:
    """The novelty reference of a Keras classifier: features of (a sample of ``sample``)
    ``train_images`` (uint8 NHWC) grouped by ``train_labels`` (None: the model's own predictions),
    the threshold from ``val_images``. For models trained before novelty, and for the benchmark's."""
    fm = feature_model(model)
    if fm is None:
        raise BatchmlError(f"model {model.name!r} has no Dense output layer whose input could serve as its "
                           "features: novelty needs a classifier ending in a Dense layer")
    if len(train_images) > sample:
        keep = np.sort(np.random.default_rng(seed).choice(len(train_images), sample, replace=False))
        train_images = train_images[keep]
        train_labels = None if train_labels is None else np.asarray(train_labels)[keep]
    probs, train_features = predict_features(fm, train_images)
    labels = probs.argmax(axis=1) if train_labels is None else np.asarray(train_labels, np.int64)
    _, val_features = predict_features(fm, val_images)
    return fit_reference(train_features, labels, val_features, probs.shape[1])


def fit_novelty_on(store, dataset: str, model, validation_fraction: float = 0.1,
                   prep: Preprocessing | None = None) -> NoveltyReference:
    """``fit_novelty`` on a labelled dataset of the store: its training split (the rows outside the
    validation split ``datasets.in_validation`` holds out, as training did) and its validation split."""
    x, y, ids, _ = datasets.load_labelled(store, dataset, prep or Preprocessing())
    val = datasets.in_validation(ids, validation_fraction)
    if val.all() or not val.any():
        raise BatchmlError(f"dataset {dataset!r} ({len(ids)} images) has no {validation_fraction:.0%} validation "
                           "split to set the novelty threshold on: pass a larger dataset")
    return fit_novelty(model, x[~val], x[val], y[~val])


def predict_features(fm, images: np.ndarray, batch: int = PREDICT_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, K), features (N, D)) from a ``feature_model``."""
    out = [fm.predict_on_batch(images[i: i + batch]) for i in range(0, len(images), batch)]
    if not out:
        k, d = (int(t.shape[-1]) for t in fm.outputs)
        return np.zeros((0, k), np.float32), np.zeros((0, d), np.float32)
    return (np.concatenate([np.asarray(p, np.float32) for p, _ in out]),
            np.concatenate([np.asarray(f, np.float32) for _, f in out]))


def feature_model(model):
    """The model with a second output, its penultimate features (the input of its last Dense
    layer), computed in the same pass; a test-time-augmentation wrapper averages the features of
    its views as it averages their probabilities. None for a model without a Dense layer."""
    import keras

    trunks = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not trunks:
        return _dual(model)
    trunk = trunks[0]
    dual = _dual(trunk)
    if dual is None or len(trunks) > 1:
        return None
    views = []

    def call(layer, *args, **kwargs):  # each view through the trunk: probabilities on, features kept
        if layer is trunk:
            probs, features = dual(*args, **kwargs)
            views.append(features)
            return probs
        return layer(*args, **kwargs)

    rebuilt = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    # named: a loaded model's own layers hold the default names ("average"), which must stay unique
    features = views[0] if len(views) == 1 else keras.layers.Average(name="batchml_view_features")(views)
    return keras.Model(rebuilt.inputs, [rebuilt.outputs[0], features], name=f"{model.name}_features")


def novelty_model(model, reference: NoveltyReference):
    """The model with a second output, each image's novelty (``NoveltyReference.score``), computed
    in the same pass from its features; None for a model without features (``feature_model``)."""
    import keras

    fm = feature_model(model)
    if fm is None:
        return None
    novelty = _novelty_layer(keras, reference)(fm.outputs[1])
    return keras.Model(fm.inputs, [fm.outputs[0], novelty], name=f"{model.name}_novelty")


def _novelty_layer(keras, reference: NoveltyReference):
    """A layer: (N, D) features -> (N,) distance to the nearest class mean over the threshold."""
    offset, centres = reference.whitened()  # (D,), (K', D)
    constants = {"whitening": reference.whitening, "offset": offset, "centres_t": centres.T,
                 "centres_sq": np.square(centres).sum(axis=1)}

    class MahalanobisNovelty(keras.layers.Layer):
        def build(self, input_shape) -> None:
            for name, value in constants.items():
                weight = self.add_weight(shape=value.shape, initializer="zeros", trainable=False, name=name)
                weight.assign(value)
                setattr(self, name, weight)

        def call(self, features):
            ops = keras.ops
            z = ops.matmul(ops.cast(features, "float32"), self.whitening) - self.offset  # (N, D)
            squared = ops.sum(z * z, axis=1, keepdims=True) - 2 * ops.matmul(z, self.centres_t) + self.centres_sq
            return ops.sqrt(ops.maximum(ops.min(squared, axis=1), 0.0)) / reference.threshold

    return MahalanobisNovelty(dtype="float32", name="batchml_novelty")


def _dual(model):
    """A plain (non-nested) classifier with outputs (probabilities, input of its last Dense layer)."""
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense or len(model.outputs) != 1:
        return None
    return keras.Model(model.inputs, [model.outputs[0], dense[-1].input], name=f"{model.name}_dual")


def attach_novelty(store, mv, reference: NoveltyReference) -> dict:
    """Keep ``reference`` with the registered version ``mv`` (a ``layout.ModelVersion``) of a model
    trained before novelty: its arrays in ``novelty.npz``, then its entry in the card (rewritten
    whole, the card's other keys unchanged). Returns the card entry. Refuses a version that has one."""
    from batchml.registry import read_card

    card = read_card(store, mv)
    if card.novelty:
        raise BatchmlError(f"model {mv} already has a novelty reference ({store.url(mv.novelty_path)}): "
                           "register a new version to change it")
    store.write_bytes(mv.novelty_path, reference.to_bytes())  # before the card names it
    entry = reference.card_entry()
    store.write_json(mv.card_path, {**card.to_dict(), "novelty": entry})
    return entry


def read_novelty(store, mv, entry: dict | None) -> NoveltyReference | None:
    """The version's reference, or None for a card without one."""
    if not entry:
        return None
    try:
        return NoveltyReference.from_bytes(store.read_bytes(mv.novelty_path), entry)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        raise BatchmlError(f"model {mv}: its card names a novelty reference but {store.url(mv.novelty_path)} "
                           f"cannot be read ({e!r}): restore it, or delete 'novelty' from the card") from e
