"""Novelty: how unlike the training images an image is, from the model's penultimate features.

The score adds two distances, each over its validation split's 95th percentile: the cosine
distance of an image's features to its ``K_NEIGHBOURS``-th nearest neighbour in a bank of
training features (deep nearest neighbours; Sun et al., ICML 2022), which finds images far from
anything trained on, and the entropy of its probabilities, which finds images between classes (a
class the model never saw reads as a mix of the nearest ones). The sum is divided by a threshold:
the validation split's 95th percentile. So 1.0 means "as far as the 5%
least typical validation images", and a feed of images of no class reads well above it while its
softmax can still be confident. On this project's fast net (README, measured section) it
separates generated images and a class held out of training better than the Mahalanobis distance
to the class means with a shared covariance, which read images with small features as typical,
and better than either distance alone.

The reference (the bank: a sample of the training split's features, L2-normalised, then centred
and kept on their ``PROJECTED_DIM`` principal axes, float16) is fitted when a model is trained
and kept beside it (``models/<name>/vN/novelty.npz``); the card keeps the threshold and the
validation split's rate (``card.novelty``). ``fit_novelty`` fits it for a model trained before,
``attach_novelty`` stores it with such a version.

Scoring runs ``novelty_model(model, reference)``: one pass that gives the probabilities and the
novelty, the similarities computed inside the model (on the device, beside the features).

Why the projection (method ``knn-pca``): the similarity product with a bank of 10,000 x 512 was
two thirds of the diagnostics' cost per partition (``benchmarks/diagnostics_cost.py``), its top-k
the rest. The
cosine similarity of a unit feature f to a bank feature b is f.mean + f.(b - mean); on the bank's
top 128 principal axes P the second term is (f P).((b - mean) P) to within the discarded
variance, a quarter of the work. The thresholds are fitted on the projected distances, so the
score is calibrated to what scoring computes; ``benchmarks/novelty_projection.py`` measures that
it and the smaller bank flag the images the exact bank of 10,000 flagged. Cards of method ``knn``
(the exact bank, before the projection) are read and scored as they were.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np

from batchml.data import datasets
from batchml.data.images import Preprocessing
from batchml.errors import BatchmlError
from batchml.stats import NOVELTY_BINS, NOVELTY_EDGES

NOVELTY_QUANTILE = 0.95  # the validation quantile that scores 1.0
TRAIN_SAMPLE = 5_000  # training images whose features form the bank
K_NEIGHBOURS = 5  # the neighbour whose distance is the score: steadier than the nearest alone
# (before the projection: 10,000 and the 10th; half the bank and half the k keep the density the
# k-th neighbour measures, and halve the top-k, the larger cost once the product is projected)
PREDICT_BATCH = 512
METHOD = "knn-pca"  # the bank on its principal axes
EXACT_METHOD = "knn"  # the bank itself: references fitted before the projection
PROJECTED_DIM = 128  # principal axes kept: the 10th-neighbour distance ranks as the exact one's (Spearman 0.9995)
# A model whose validation images sit almost on its training images (a small, easy dataset) has
# quantiles near zero: the float16 bank's rounding, or a sliver less confidence, would then read as
# novel. Below these floors two images are the same to the model.
DISTANCE_FLOOR = 0.01  # cosine distance
ENTROPY_FLOOR = 0.05  # nats


def normalised(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, np.float64)
    return -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1)


@dataclass(frozen=True)
class NoveltyReference:
    """A bank of normalised training features and the thresholds that scale the two distances."""

    bank: np.ndarray  # (M, d) float16: L2-normalised penultimate features of training images, centred on
    # ``mean`` and on the principal ``axes`` (method knn-pca); without axes, (M, D): the features (knn)
    neighbour_threshold: float  # the validation split's 95th percentile of the neighbour distance
    entropy_threshold: float  # ... of the entropy of the probabilities
    threshold: float  # ... of the sum of the two, each over its own: the score that reads 1.0
    validation_rate: float  # share of the validation split scoring above 1.0 (about 1 - NOVELTY_QUANTILE)
    validation_hist: tuple[int, ...]  # (NOVELTY_BINS,) the validation split's scores
    train_rows: int  # training images in the bank
    axes: np.ndarray | None = None  # (D, d) float32: the bank's principal axes; None: the exact bank
    mean: np.ndarray | None = None  # (D,) float32: the mean normalised training feature
    neighbours: int = K_NEIGHBOURS  # the neighbour whose distance is the score

    @property
    def k(self) -> int:
        return min(self.neighbours, len(self.bank))

    @property
    def feature_dim(self) -> int:
        return int(self.bank.shape[1] if self.axes is None else self.axes.shape[0])

    def similarities(self, unit: np.ndarray) -> np.ndarray:
        """(N, D) unit features -> (N, M) cosine similarity to each bank feature (as the layer computes it)."""
        bank = self.bank.astype(np.float32).T
        if self.axes is None:
            return unit @ bank
        return (unit @ self.axes) @ bank + (unit @ self.mean)[:, None]

    def distances(self, features: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """(N, D) features -> (N,) cosine distance to the K-th nearest bank feature."""
        out = [np.maximum(0.0, 1.0 - np.sort(self.similarities(normalised(features[i: i + chunk])), axis=1)[:, -self.k])
               for i in range(0, len(features), chunk)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def raw(self, features: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return self.distances(features) / self.neighbour_threshold + entropy(probs) / self.entropy_threshold

    def score(self, features: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """(N, D) features and (N, K) probabilities -> (N,) novelty (above 1.0: novel)."""
        return self.raw(features, probs) / self.threshold

    def card_entry(self) -> dict:
        """What the card keeps (``card.novelty``); the bank lives in ``layout.NOVELTY_FILE``."""
        return {"method": EXACT_METHOD if self.axes is None else METHOD, "k": self.k,
                "neighbour_threshold": self.neighbour_threshold, "entropy_threshold": self.entropy_threshold,
                "threshold": self.threshold, "quantile": NOVELTY_QUANTILE, "validation_rate": self.validation_rate,
                "validation_hist": list(self.validation_hist), "edges": NOVELTY_EDGES.tolist(),
                "feature_dim": self.feature_dim, "dimensions": int(self.bank.shape[1]), "train_rows": self.train_rows}

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        projection = {} if self.axes is None else {"axes": self.axes, "mean": self.mean}
        np.savez(buf, bank=self.bank, **projection)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, entry: dict) -> NoveltyReference:
        """The reference from ``novelty.npz``'s bytes and the card's ``novelty`` entry."""
        projected = entry.get("method", EXACT_METHOD) == METHOD
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:  # a bare .npy has no "with": a TypeError
            bank = arrays["bank"]
            axes, mean = (arrays["axes"], arrays["mean"]) if projected else (None, None)
            if not projected and "axes" in arrays.files:
                raise ValueError("a bank on principal axes under a card of the exact method (knn)")
        if bank.ndim != 2 or not len(bank):
            raise ValueError(f"bank of shape {bank.shape}: one row per training image is needed")
        if projected and not (axes.ndim == 2 and axes.shape[1] == bank.shape[1] and mean.shape == (axes.shape[0],)):
            raise ValueError(f"bank {bank.shape}, axes {axes.shape} and mean {mean.shape} do not fit together")
        features = axes.shape[0] if projected else bank.shape[1]
        if "feature_dim" in entry and int(entry["feature_dim"]) != features:
            raise ValueError(f"{features} feature dimensions where the card says {entry['feature_dim']}")
        if not all(np.isfinite(a).all() for a in (bank, axes, mean) if a is not None):
            raise ValueError("values that are not finite (NaN or infinity)")
        thresholds = [float(entry[k]) for k in ("neighbour_threshold", "entropy_threshold", "threshold")]
        k = int(entry.get("k", K_NEIGHBOURS))
        if not all(math.isfinite(t) and t > 0 for t in thresholds) or k < 1:
            raise ValueError(f"thresholds {thresholds} and k {k}: finite thresholds above 0 and k of 1 or more")
        return cls(bank, *thresholds, float(entry["validation_rate"]),
                   tuple(int(c) for c in entry["validation_hist"]), int(entry.get("train_rows", len(bank))),
                   axes, mean, k)


def _quantile(values: np.ndarray, floor: float = 0.0) -> float:
    q = float(np.quantile(values, NOVELTY_QUANTILE)) if len(values) else 1.0
    return max(q, floor) if q > 0 else 1.0


def principal_axes(unit: np.ndarray, dimensions: int = PROJECTED_DIM) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), axes (D, d)) of (M, D) unit features: their mean and top ``dimensions``
    principal axes (all D where there are no more)."""
    mean = unit.mean(axis=0)
    _, _, vt = np.linalg.svd(unit - mean, full_matrices=False)  # rows of vt: the axes, largest variance first
    return mean.astype(np.float32), np.ascontiguousarray(vt[:dimensions].T, np.float32)


def fit_reference(train_features: np.ndarray, val_features: np.ndarray, val_probs: np.ndarray,
                  dimensions: int | None = PROJECTED_DIM, neighbours: int = K_NEIGHBOURS) -> NoveltyReference:
    """The bank from (N, D) training features (on their ``dimensions`` principal axes; None: the
    exact bank, method knn); the thresholds from the validation features and probabilities."""
    # a non-finite feature (an overflowing image) would fail the SVD and drop novelty for the whole model
    unit = normalised(train_features[np.isfinite(train_features).all(axis=1)])
    axes = mean = None
    if dimensions is not None:
        mean, axes = principal_axes(unit, dimensions)
        unit = (unit - mean) @ axes
    bank, rows = unit.astype(np.float16), len(unit)
    draft = NoveltyReference(bank, 1.0, 1.0, 1.0, 0.0, (), rows, axes, mean, neighbours)
    neighbour = _quantile(draft.distances(val_features), DISTANCE_FLOOR)
    spread = _quantile(entropy(val_probs), ENTROPY_FLOOR)
    draft = NoveltyReference(bank, neighbour, spread, 1.0, 0.0, (), rows, axes, mean, neighbours)
    raw = draft.raw(val_features, val_probs)
    threshold = _quantile(raw, 1.0)  # floored too: an image at both floors is not novel
    scores = raw / threshold
    bins = np.clip(np.searchsorted(NOVELTY_EDGES, scores, side="right") - 1, 0, NOVELTY_BINS - 1)
    return NoveltyReference(bank, neighbour, spread, threshold, float((scores > 1.0).mean()) if len(scores) else 0.0,
                            tuple(np.bincount(bins, minlength=NOVELTY_BINS).tolist()), rows, axes, mean, neighbours)


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
    _, train_features = predict_features(fm, train_images)
    val_probs, val_features = predict_features(fm, val_images)
    return fit_reference(train_features, val_features, val_probs)


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


def novelty_model(model, reference: NoveltyReference | None):
    """The model with a second output, each image's novelty (``NoveltyReference.score``), computed
    in the same pass from its features; None for a model without features (``feature_model``) or
    without a reference this batchml reads (``read_novelty``)."""
    import keras

    fm = feature_model(model) if reference is not None else None
    if fm is None:
        return None
    novelty = _novelty_layer(keras, reference)([fm.outputs[1], fm.outputs[0]])
    return keras.Model(fm.inputs, [fm.outputs[0], novelty], name=f"{model.name}_novelty")


def _novelty_layer(keras, reference: NoveltyReference):
    """A layer: [(N, D) features, (N, K) probabilities] -> (N,) novelty (``NoveltyReference.score``)."""
    bank_t, k = reference.bank.astype(np.float32).T, reference.k
    projected = reference.axes is not None

    class Novelty(keras.layers.Layer):
        def build(self, input_shape) -> None:
            def constant(name: str, value: np.ndarray):
                weight = self.add_weight(shape=value.shape, initializer="zeros", trainable=False, name=name)
                weight.assign(value)
                return weight

            self.bank_t = constant("bank_t", bank_t)
            if projected:
                self.axes, self.mean = constant("axes", reference.axes), constant("mean", reference.mean[:, None])

        def call(self, inputs):
            ops = keras.ops
            features, probs = (ops.cast(x, "float32") for x in inputs)
            f = features / ops.maximum(ops.sqrt(ops.sum(features * features, axis=1, keepdims=True)), 1e-12)
            if projected:  # the top-k before adding f.mean: a constant per image does not change its order
                nearest, _ = ops.top_k(ops.matmul(ops.matmul(f, self.axes), self.bank_t), k)
                nearest = nearest + ops.matmul(f, self.mean)
            else:
                nearest, _ = ops.top_k(ops.matmul(f, self.bank_t), k)  # (N, k), largest first
            spread = -ops.sum(probs * ops.log(ops.maximum(probs, 1e-12)), axis=1)
            distance = ops.maximum(0.0, 1.0 - nearest[:, -1])  # float16 rounding can go below 0
            raw = distance / reference.neighbour_threshold + spread / reference.entropy_threshold
            return raw / reference.threshold

    return Novelty(dtype="float32", name="batchml_novelty")


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
    if not entry or entry.get("method", EXACT_METHOD) not in (METHOD, EXACT_METHOD):  # another method's: scored without
        return None
    try:
        return NoveltyReference.from_bytes(store.read_bytes(mv.novelty_path), entry)
    # a damaged archive: BadZipFile, EOFError (empty), TypeError (not an archive or a field of the wrong type)
    except (FileNotFoundError, KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError, TypeError) as e:
        raise BatchmlError(f"model {mv}: its card names a novelty reference but {store.url(mv.novelty_path)} "
                           f"cannot be read ({e!r}): restore it, or delete 'novelty' from the card") from e
