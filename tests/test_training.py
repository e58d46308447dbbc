import numpy as np
import pytest

from batchml.data import datasets
from batchml.data.images import Preprocessing
from batchml.errors import BatchmlError
from batchml.registry import read_card, resolve


@pytest.mark.slow
def test_tutorial_architecture_shapes():
    from batchml.train.architectures import build

    model = build("tutorial", 10, Preprocessing())
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 10)
    assert [layer.output.shape[1:] for layer in model.layers if "conv" in layer.name] == [
        (32, 32, 32), (30, 30, 32), (15, 15, 64), (13, 13, 64)]
    assert model.count_params() == 1_250_858  # the tutorial's published parameter count


def test_unknown_architecture_lists_the_known_ones():
    from batchml.train.architectures import build

    with pytest.raises(BatchmlError, match=r"use one of tutorial"):
        build("resnet9000", 10, Preprocessing())


def test_validation_split_is_stable_and_near_its_fraction():
    ids = [f"train/c/{i:05d}.png" for i in range(20000)]
    first, again = datasets.in_validation(ids, 0.1), datasets.in_validation(list(reversed(ids)), 0.1)
    assert np.array_equal(first, again[::-1])
    assert 0.09 < first.mean() < 0.11


@pytest.mark.slow
def test_training_task_registers_a_version_with_its_card(trained_store):
    mv = resolve(trained_store, "shapes/production")
    card = read_card(trained_store, mv)
    train_manifest = datasets.read_manifest(trained_store, "shapes-train")
    assert card.classes == train_manifest.classes
    assert card.data.fingerprint == train_manifest.fingerprint
    assert set(card.learning_curves) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in card.learning_curves.values())  # one point per epoch
    t = card.training
    assert t["train_rows"] + t["validation_rows"] == 120 and t["validation_rows"] > 0
    assert card.metrics.test.rows == 60
    assert sum(card.reference.predicted_counts) == 60 and card.reference.split == "test"
    assert card.calibration.temperature > 0
    assert card.preprocessing == Preprocessing().to_dict()


@pytest.mark.slow
def test_the_card_keeps_the_validation_rows_bbse_resamples(trained_store):
    from batchml.reference import decode_rows

    card = read_card(trained_store, resolve(trained_store, "shapes/production"))
    probs, labels = decode_rows(card.validation_rows)
    assert len(labels) == card.training["validation_rows"] == card.metrics.validation.rows
    joint = np.zeros((probs.shape[1],) * 2)
    np.add.at(joint, labels, probs)  # true class x summed probabilities, as the card's matrix
    assert joint == pytest.approx(np.asarray(card.metrics.validation.prob_confusion), abs=0.01)


@pytest.mark.slow
def test_training_an_unknown_dataset_fails_before_any_task(client, store):
    from batchml.train.training import TrainConfig, train

    with pytest.raises(BatchmlError, match=r"unknown dataset 'nope'.*batchml ingest"):
        train(client, store, TrainConfig("nope"), verbose=False)


def test_training_needs_no_dask_outside_a_worker(monkeypatch, capsys):
    """``fit`` alone runs on a machine with Keras but no Dask (a bare GPU box): its
    progress events are printed instead of sent to a scheduler."""
    import sys

    from batchml.train.training import _emit

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    _emit({"stage": "loading", "dataset": "d", "rows": 3})
    assert "train: stage loading, dataset d, rows 3" in capsys.readouterr().out


def test_train_config_fields_are_the_recipes_settings_as_declared():
    """``TrainConfig`` is written out for type checkers; its hyperparameters must stay the recipe's
    settings (name, type, default None, order), so the two declarations never drift apart."""
    import typing
    from dataclasses import fields

    from batchml.train.config import TrainConfig
    from batchml.train.recipes import SETTINGS, setting_type

    hints = typing.get_type_hints(TrainConfig)
    names = [f.name for f in fields(TrainConfig)]
    first = names.index(SETTINGS[0].name)
    mine = [(f.name, hints[f.name], f.default) for f in fields(TrainConfig)[first:first + len(SETTINGS)]]
    declared = [(s.name, setting_type(s) | None, None) for s in SETTINGS]
    paste = "\n".join(f"    {s.name}: {setting_type(s).__name__} | None = None" for s in SETTINGS)
    assert mine == declared, f"batchml/train/config.py's recipe settings should read:\n{paste}"
    assert not {s.name for s in SETTINGS} & set(names[:first] + names[first + len(SETTINGS):])


def test_train_config_takes_the_recipes_values_where_unset():
    from batchml.train.config import TrainConfig
    from batchml.train.recipes import RECIPES

    assert TrainConfig("d").recipe() == RECIPES["tutorial"]
    assert TrainConfig("d", arch="fast", epochs=3).recipe().epochs == 3
    with pytest.raises(BatchmlError, match="invalid model name"):
        TrainConfig("d", name="../x")
