"""The fast net and its recipe: architecture shapes, whitening initialisation, the one-cycle
schedule, augmentation, the fit verdict, reproducibility, warm start and sweeps."""

import numpy as np
import pandas as pd
import pytest

from batchml.data.images import Preprocessing
from batchml.errors import BatchmlError
from batchml.records import ModelCard
from batchml.registry import read_card, resolve
from batchml.train.diagnostics import fit_verdict
from tests.conftest import copy_store


def correlated_images(n=300, seed=0):
    """Smooth colour images: neighbouring pixels and channels strongly correlated."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 40, (n, 8, 8, 1)) + rng.normal(0, 15, (n, 8, 8, 3))
    return np.clip(base.repeat(4, axis=1).repeat(4, axis=2), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_fast_architecture_shapes():
    from batchml.train.architectures import build

    model = build("fast", 10, Preprocessing(), width=32)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    convs = [layer for layer in model.layers if "conv" in layer.name or layer.name == "whiten"]
    assert [layer.output.shape[1:] for layer in convs] == [
        (31, 31, 24), (31, 31, 32), (15, 15, 32), (15, 15, 128), (7, 7, 128), (7, 7, 128), (3, 3, 128)]
    assert not model.get_layer("whiten").trainable
    assert model.count_params() == 498_680
    with pytest.raises(BatchmlError, match="--arch tutorial"):
        build("tutorial", 10, Preprocessing(), width=64)  # the tutorial net has no width


def test_whitening_layer_decorrelates_the_patches_it_was_fitted_on():
    from batchml.train.architectures import whitening_weights

    pixels = correlated_images()
    kernel, bias = whitening_weights(pixels, epsilon=0.0)
    assert kernel.shape == (2, 2, 3, 24) and bias.shape == (24,)
    x = pixels.astype(np.float64) / 255
    patches = np.stack([x[:, i:i + 31, j:j + 31] for i in range(2) for j in range(2)], axis=3).reshape(-1, 12)
    out = patches @ kernel.reshape(12, 24) + bias
    assert np.allclose(out.mean(axis=0), 0, atol=1e-3)  # centred
    assert np.allclose(np.cov(out[:, :12], rowvar=False), np.eye(12), atol=1e-2)  # unit, uncorrelated
    assert np.allclose(out[:, 12:], -out[:, :12], atol=1e-5)  # each direction with both signs


def test_dirac_kernels_start_as_identities_on_their_first_channels():
    import keras

    from batchml.train.architectures import Dirac

    kernel = keras.ops.convert_to_numpy(Dirac()((3, 3, 4, 6), "float32"))
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype(np.float32)
    out = keras.ops.convert_to_numpy(keras.ops.conv(x, kernel, padding="same"))
    assert np.allclose(out[..., :4], x, atol=1e-6)  # the first 4 filters pass their channel through
    assert 0 < np.abs(kernel[..., 4:]).max() <= 1 / np.sqrt(3 * 3 * 4)  # the others: PyTorch's default range
    assert np.allclose(keras.ops.convert_to_numpy(Dirac()((3, 3, 6, 4), "float32"))[1, 1, :4, :4], np.eye(4))


@pytest.mark.slow
def test_batch_norm_shifts_learn_64_times_faster_than_a_plain_bias():
    import keras

    from batchml.train.architectures import Shift

    def one_step(layer):
        model = keras.Sequential([keras.Input((3,)), layer])
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.train_on_batch(np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32))
        return model.predict(np.zeros((1, 3), np.float32), verbose=0)

    plain = one_step(Shift(boost=1.0))
    assert np.allclose(one_step(Shift()), 64 * plain, rtol=1e-4) and plain.min() > 0


@pytest.mark.slow
def test_test_time_augmentation_averages_its_views_and_survives_the_registry(store):
    from batchml.registry import load_model, register
    from batchml.train.architectures import build, with_tta

    trunk = build("fast", 3, Preprocessing(), sample=correlated_images(50), width=4)
    x = correlated_images(8, seed=1)

    def both(v):
        return (trunk.predict(v, verbose=0) + trunk.predict(v[:, :, ::-1], verbose=0)) / 2

    assert np.allclose(with_tta(trunk, "flip").predict(x, verbose=0), both(x), atol=1e-5)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, 2:, 2:], padded[:, :-2, :-2]  # content shifted by -1 and +1
    expected = both(x) / 2 + (both(up_left) + both(down_right)) / 4
    model = with_tta(trunk, "flip-translate")
    assert np.allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    path = str(store.path("tmp.keras"))
    store.fs.makedirs(store.path(""), exist_ok=True)
    model.save(path)
    mv = register(store, "tiny", path, ModelCard.from_dict({"arch": "fast"}))
    assert np.allclose(load_model(store, mv).predict(x, verbose=0), expected, atol=1e-5)  # safe mode loads it


def test_one_cycle_schedule_warms_up_then_decays_to_zero():
    from batchml.train.learning import OneCycle

    lr = OneCycle(peak=1.0, total_steps=100, warmup=0.2, start=0.1)
    at = {s: float(lr(s)) for s in (0, 10, 20, 60, 100, 120)}
    assert at == pytest.approx({0: 0.1, 10: 0.55, 20: 1.0, 60: 0.5, 100: 0.0, 120: 0.0})


def test_augmentation_only_flips_and_translates():
    from batchml.train.learning import augment

    x = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    flip = np.random.default_rng(2).random(len(x)) < 0.5
    same = augment(x, np.random.default_rng(1), flip, shift=0)
    flipped = [np.array_equal(a, b[:, ::-1]) for a, b in zip(same, x, strict=True)]
    assert all(np.array_equal(a, b) or f for a, b, f in zip(same, x, flipped, strict=True))
    assert 16 < sum(flipped) < 48
    moved = augment(x, np.random.default_rng(1), flip, shift=2)
    assert moved.shape == x.shape and moved.dtype == np.uint8
    assert np.array_equal(augment(x, np.random.default_rng(5), flip), augment(x, np.random.default_rng(5), flip))


def test_augmentation_copies_each_image_from_its_drawn_crop():
    """The grouped slices equal a plain per-image crop of the reflect-padded image."""
    from batchml.train.learning import augment

    x = np.random.default_rng(0).integers(0, 255, (200, 32, 32, 3), dtype=np.uint8)
    rng = np.random.default_rng(3)
    dy, dx = rng.integers(0, 5, (2, len(x)))
    flip = rng.random(len(x)) < 0.5
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    crops = [padded[k, i:i + 32, j:j + 32] for k, (i, j) in enumerate(zip(dy, dx, strict=True))]
    expected = np.stack([c[:, ::-1] if f else c for c, f in zip(crops, flip, strict=True)])
    assert np.array_equal(augment(x, np.random.default_rng(3), flip), expected)


def test_batches_are_full_and_flip_each_image_every_other_epoch():
    from batchml.train.learning import Batches

    x = np.random.default_rng(0).integers(0, 255, (70, 8, 8, 3), dtype=np.uint8)
    x[:, :, 4:] = 0  # left half bright, right half dark: a flip shows
    batches = Batches(x, np.arange(70), batch_size=32, seed=1, augmented=True)
    sides = []
    for _ in range(3):
        assert len(batches) == 2  # 70 images: two full batches, 6 left over
        seen = {}
        for i in range(len(batches)):
            images, labels = batches[i]
            assert len(images) == 32
            seen.update({int(k): bool(im[:, :3].sum() < im[:, 5:].sum()) for k, im in zip(labels, images, strict=True)})
        sides.append(seen)
        batches.on_epoch_end()
    both = [k for k in sides[0] if k in sides[1]]
    assert both and all(sides[0][k] != sides[1][k] for k in both)  # each image changes side every epoch
    assert 0 < sum(sides[0].values()) < len(sides[0])  # ...starting on a random one
    assert len(Batches(x[:5], np.arange(5), batch_size=32, seed=1, augmented=False)) == 1  # fewer than a batch


@pytest.mark.slow
def test_the_moving_average_of_weights_momentum_and_activation_are_recipe_options():
    from batchml.train.architectures import build
    from batchml.train.learning import optimizer
    from batchml.train.training import TrainConfig

    on, off = (TrainConfig("d", arch="fast", ema=ema, momentum=0.85).recipe() for ema in (True, False))
    assert optimizer(on, 10, on.learning_rate).use_ema and not optimizer(off, 10, off.learning_rate).use_ema
    assert optimizer(off, 10, off.learning_rate).momentum == 0.85
    recipe = TrainConfig("d", arch="fast", activation="gelu").recipe()
    gelu = build("fast", 10, Preprocessing(), width=4, activation=recipe.activation)
    activations = {layer.get_config()["activation"] for layer in gelu.layers if layer.name.startswith("activation")}
    assert activations - {"softmax"} == {"gelu"}
    with pytest.raises(BatchmlError, match="unknown activation 'tanh'"):
        build("fast", 10, Preprocessing(), width=4, activation="tanh")


@pytest.mark.parametrize(("curves", "verdict"), [
    ({"accuracy": [0.5, 0.8, 0.95, 0.99], "val_accuracy": [0.5, 0.7, 0.72, 0.71],
      "loss": [1.5, 0.6, 0.2, 0.05], "val_loss": [1.4, 0.9, 1.0, 1.3]}, "over-fitting"),
    ({"accuracy": [0.3, 0.4, 0.5], "val_accuracy": [0.32, 0.42, 0.51],
      "loss": [2.0, 1.7, 1.4], "val_loss": [1.9, 1.6, 1.35]}, "under-fitting"),
    ({"accuracy": [0.6, 0.8, 0.85], "val_accuracy": [0.6, 0.78, 0.8],
      "loss": [1.1, 0.6, 0.45], "val_loss": [1.1, 0.65, 0.6]}, "good fit"),
])
def test_fit_verdict_reads_the_learning_curves(curves, verdict):
    assert fit_verdict(curves)["verdict"] == verdict


@pytest.mark.slow
def test_the_same_seed_trains_the_same_model(trained_store):
    from batchml.train.training import TrainConfig, fit

    cfg = TrainConfig("shapes-train", arch="fast", epochs=1, batch_size=32, width=4, seed=7)
    (m1, c1), (m2, c2) = fit(trained_store, cfg), fit(trained_store, cfg)
    assert c1.learning_curves == c2.learning_curves
    assert all(np.array_equal(a, b) for a, b in zip(m1.get_weights(), m2.get_weights(), strict=True))
    _, c3 = fit(trained_store, TrainConfig("shapes-train", arch="fast", epochs=1, batch_size=32, width=4, seed=8))
    assert c3.learning_curves != c1.learning_curves


@pytest.mark.slow
def test_warm_start_fine_tunes_a_registered_version(client, trained_store, tmp_path):
    from batchml.train.training import TrainConfig, train

    store = copy_store(trained_store, tmp_path / "store")
    mv, card = train(client, store, TrainConfig("shapes-train", "shapes-test", name="shapes", epochs=1,
                                                warm_start="shapes/production"), verbose=False)
    parent = resolve(store, "shapes/production")
    assert mv.version != parent.version and card.training["warm_start_from"] == str(parent)
    assert card.arch == read_card(store, parent).arch
    assert card.training["learning_rate_used"] == pytest.approx(1e-4)  # a tenth of the recipe's
    assert card.test_accuracy >= read_card(store, parent).test_accuracy - 0.1
    with pytest.raises(BatchmlError, match="no version or alias 'v99'"):
        train(client, store, TrainConfig("shapes-train", warm_start="shapes/v99"), verbose=False)


@pytest.mark.slow
def test_a_sweep_runs_its_trials_across_two_workers_and_registers_the_best(client, trained_store, tmp_path):
    from batchml.train.sweep import SweepConfig, read_trials, sweep
    from batchml.train.training import TrainConfig

    store = copy_store(trained_store, tmp_path / "store")
    cfg = SweepConfig(TrainConfig("shapes-train", "shapes-test", name="swept", arch="fast", epochs=1, width=4),
                      {"learning_rate": [0.05, 0.2], "batch_size": [16, 32]}, sweep_id="s1")
    result = sweep(client, store, cfg, verbose=False)
    trials = pd.DataFrame(read_trials(store, "s1"))
    assert sorted(trials.trial) == [0, 1, 2, 3] and trials.validation_accuracy.between(0, 1).all()
    assert {"params", "curves", "validation_accuracy", "seconds", "fit", "worker"} <= set(trials.columns)
    assert trials.worker.nunique() == 2  # both workers trained
    best = trials.loc[trials.validation_accuracy.idxmax()]
    assert result.best_trial == best.trial and result.registered == "swept/v1"
    card = read_card(store, resolve(store, "swept/v1"))
    assert card.metrics.test.rows == 60 and card.training["sweep"] == {"sweep_id": "s1", "trial": int(best.trial)}
    kept = [n for n in range(4) if store.exists(f"sweeps/s1/trial-{n:03d}/model.keras")]
    assert kept == [int(best.trial)]  # the losers' models are deleted, their rows kept
    assert sweep(client, store, cfg, verbose=False).registered == "swept/v1"  # a rerun trains nothing


def test_sweep_parameters_are_checked():
    from batchml.train.sweep import parse_space

    assert parse_space(["learning_rate=0.1,0.2", "width=8,16"]) == {"learning_rate": [0.1, 0.2], "width": [8, 16]}
    with pytest.raises(BatchmlError, match="NAME one of"):
        parse_space(["beta=0.9"])
    with pytest.raises(BatchmlError, match="not numbers"):
        parse_space(["epochs=a,b"])
