import keras
import numpy as np
import pytest

from batchml.errors import BatchmlError
from batchml.records import ModelCard
from batchml.registry import ModelVersion, list_versions, load_model, promote, read_card, register, resolve


@pytest.fixture
def model_file(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    path = str(tmp_path / "m.keras")
    model.save(path)
    return path


@pytest.mark.slow
def test_versions_are_numbered_and_cards_stored(store, model_file):
    v1 = register(store, "cifar10", model_file, ModelCard.from_dict({"arch": "x"}))
    v2 = register(store, "cifar10", model_file, ModelCard.from_dict({"arch": "y"}))
    assert (str(v1), str(v2)) == ("cifar10/v1", "cifar10/v2")
    assert list_versions(store, "cifar10") == ["v1", "v2"]
    card = read_card(store, v2)
    assert (card.arch, card.name, card.version) == ("y", "cifar10", "v2")
    assert {k: v for k, v in card.to_dict().items() if v is not None} == {  # and nothing else
        "arch": "y", "name": "cifar10", "version": "v2", "schema_version": card.SCHEMA_VERSION}


@pytest.mark.slow
def test_a_version_without_its_card_is_not_committed(store, model_file):
    register(store, "cifar10", model_file, ModelCard.from_dict({}))
    store.write_bytes("models/cifar10/v2/model.keras", b"half-written")
    assert list_versions(store, "cifar10") == ["v1"]


@pytest.mark.slow
def test_aliases_resolve_and_move(store, model_file):
    v1 = register(store, "cifar10", model_file, ModelCard.from_dict({}))
    v2 = register(store, "cifar10", model_file, ModelCard.from_dict({}))
    promote(store, v1)
    assert resolve(store, "production") == v1
    promote(store, v2)
    assert resolve(store, "cifar10/production") == v2
    assert resolve(store, "v1") == v1


@pytest.mark.slow
def test_unknown_versions_and_aliases_say_what_exists(store, model_file):
    with pytest.raises(BatchmlError, match=r"no versions of model 'cifar10'.*batchml train"):
        resolve(store, "production")
    register(store, "cifar10", model_file, ModelCard.from_dict({}))
    with pytest.raises(BatchmlError, match=r"no version or alias 'staging' \(versions: v1"):
        resolve(store, "staging")
    with pytest.raises(BatchmlError, match=r"looks like a version"):
        promote(store, ModelVersion("cifar10", "v1"), "v2")


@pytest.mark.slow
def test_loaded_model_predicts_like_the_saved_one(store, model_file):
    mv = register(store, "m", model_file, ModelCard.from_dict({}))
    x = np.ones((3, 4), np.float32)
    expected = keras.saving.load_model(model_file).predict(x, verbose=0)
    assert np.allclose(load_model(store, mv).predict(x, verbose=0), expected)




def lose_every_answer(store, monkeypatch):
    """Each create applied, its answer lost: S3's retry of it is refused as a duplicate (412)."""
    real = store.create
    monkeypatch.setattr(store, "create", lambda rel, data: real(rel, data) and False)


@pytest.mark.slow
def test_a_claim_whose_answer_was_lost_is_still_this_registrations(store, model_file, monkeypatch):
    lose_every_answer(store, monkeypatch)
    assert str(register(store, "cifar10", model_file, ModelCard.from_dict({}))) == "cifar10/v1"  # not v2, v3...
    monkeypatch.setattr(store, "create", lambda rel, data: False)  # refused, every one, by others' claims
    with pytest.raises(BatchmlError, match="could not claim a version of model 'cifar10' after 1000 tries"):
        register(store, "cifar10", model_file, ModelCard.from_dict({}))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_processes_registering_at_once_never_share_a_version(request, store, where):
    import multiprocessing

    from tests.conftest import register_at_the_barrier

    target = request.getfixturevalue("s3_store") if where == "s3" else store
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=register_at_the_barrier, args=(target.config, barrier, tag, 5, out))
             for tag in ("a", "b")]
    for p in procs:
        p.start()
    got = [version for _ in procs for version in out.get(timeout=120)]
    for p in procs:
        p.join(30)
    assert len(set(got)) == 10 and list_versions(target, "race") == [f"v{i}" for i in range(1, 11)]
    for version in got:  # each card beside its own model
        mv = ModelVersion(*version.split("/"))
        assert target.read_bytes(f"{mv.prefix}/model.keras") == read_card(target, mv).arch.encode()


def test_a_model_name_given_where_a_version_or_alias_goes_is_named(store):
    """`--model tiny` (a model's name) read as the alias 'tiny' of cifar10: the error spoke of cifar10 alone."""
    from tests.ops_fixtures import register_tiny

    register_tiny(store)
    with pytest.raises(BatchmlError, match=r"'tiny' is a model, not a version or alias of model 'cifar10': "
                                           r"name one of its versions or aliases, e\.g\. tiny/production"):
        resolve(store, "tiny")
    assert str(resolve(store, "tiny/production")) == "tiny/v1"
