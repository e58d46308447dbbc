"""Model versions under ``models/<name>/<version>/`` (``model.keras`` and ``card.json``).

A version is committed when its card exists: the card is written after the model.
Versions are immutable and numbered ``v1, v2, ...``; aliases such as ``production``
live in ``models/<name>/aliases.json`` and point at versions.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass, replace

from batchml import layout
from batchml.errors import BatchmlError
from batchml.layout import ModelVersion, check_name, check_new_name
from batchml.records import SCORING_NEEDS, Aliases, ModelCard
from batchml.store import Store

DEFAULT_MODEL_NAME = "cifar10"
DEFAULT_ALIAS = "production"

__all__ = ["DEFAULT_ALIAS", "DEFAULT_MODEL_NAME", "ModelVersion", "RegisteredVersion", "list_models", "list_registered",
           "list_versions", "load_model", "promote", "read_aliases", "read_card", "register", "resolve"]


def list_models(store: Store) -> list[str]:
    return store.list(layout.MODELS)


def list_versions(store: Store, name: str) -> list[str]:
    """Committed versions of a model, oldest first."""
    found = [v for v in store.list(layout.model_prefix(name)) if layout.is_version(v)]
    found = [v for v in found if store.exists(ModelVersion(name, v).card_path)]
    return sorted(found, key=layout.version_number)


@dataclass(frozen=True)
class RegisteredVersion:
    """A committed version as the listings show it (``batchml models list``, the dashboard's Models)."""

    version: ModelVersion
    card: ModelCard | None  # None where the card is damaged
    aliases: tuple[str, ...]  # those pointing at it
    problem: str = ""  # what is wrong with its card ("" when whole)


def list_registered(store: Store, include_damaged: bool = False) -> list[RegisteredVersion]:
    """Every committed version of every model: models by name, each one's versions oldest first. A
    damaged card or aliases file must not hide the others: a version whose card is damaged is left
    out with a warning naming it, or with ``include_damaged`` listed with its ``problem``."""
    from batchml.integrity import skip_damaged

    found = []
    for name in list_models(store):
        try:
            aliases = read_aliases(store, name)
        except BatchmlError as exc:
            skip_damaged(store.url(layout.aliases_path(name)), str(exc))
            aliases = {}
        for v in list_versions(store, name):
            mv, tags = ModelVersion(name, v), tuple(a for a, t in aliases.items() if t == v)
            try:
                found.append(RegisteredVersion(mv, read_card(store, mv, SCORING_NEEDS), tags))
            except BatchmlError as exc:
                if not include_damaged:
                    skip_damaged(store.url(mv.card_path), str(exc))
                    continue
                found.append(RegisteredVersion(mv, None, tags, str(exc)))
    return found


def read_aliases(store: Store, name: str) -> dict[str, str]:
    """Alias -> version tag of a model; empty where none was promoted. Each target is checked to
    be a version (``vN``): the file's content must never lead a path outside the model's folder
    (``"production": "../../etc"``)."""
    return _checked_aliases(store, name).aliases


def _checked_aliases(store: Store, name: str) -> Aliases:
    try:
        record = Aliases.read(store, name)
    except (ValueError, TypeError, AttributeError) as e:  # not JSON, or not an object
        raise _bad_aliases(store, name, f"not an object of alias: version ({type(e).__name__}: {e})") from None
    if not isinstance(record.aliases, dict):
        raise _bad_aliases(store, name, f"holds a {type(record.aliases).__name__}, not an object of alias: version")
    for alias, target in record.aliases.items():
        if not isinstance(target, str) or not layout.is_version(target):
            raise _bad_aliases(store, name, f"alias {alias!r} points at {target!r}, which is not a version (vN)")
    return record


def _bad_aliases(store: Store, name: str, problem: str) -> BatchmlError:
    return BatchmlError(f"{store.url(layout.aliases_path(name))} is damaged: {problem}. Point each alias at a "
                        f"version again: batchml models promote {name}/vN --alias ALIAS (`batchml doctor` lists "
                        "what else is damaged)")


def resolve(store: Store, ref: str, default_name: str = DEFAULT_MODEL_NAME) -> ModelVersion:
    """``[NAME/]VERSION_OR_ALIAS`` -> a committed version, or an error naming what exists."""
    name, _, tag = ref.rpartition("/")
    named = bool(name)
    name = check_name("model", name or default_name)
    versions = list_versions(store, name)
    # `--model shapes`: a model's name where a version or alias of the default model goes
    if not named and tag not in versions and layout.NAME_PATTERN.match(tag) \
            and (theirs := list_versions(store, tag)) and not (versions and tag in read_aliases(store, name)):
        aliases = read_aliases(store, tag)
        example = f"{tag}/{DEFAULT_ALIAS if DEFAULT_ALIAS in aliases else next(iter(aliases), theirs[-1])}"
        raise BatchmlError(f"{tag!r} is a model, not a version or alias of model {name!r}: name one of its versions "
                           f"or aliases, e.g. {example} (versions: {', '.join(theirs)}; "
                           f"aliases: {', '.join(aliases) or 'none'})")
    if not versions:
        raise BatchmlError(
            f"no versions of model {name!r} in {store.url()}. Train one with: "
            f"batchml train --dataset DATASET --name {name}"
        )
    if tag in versions:
        return ModelVersion(name, tag)
    aliases = read_aliases(store, name)
    if tag in aliases and aliases[tag] in versions:
        return ModelVersion(name, aliases[tag])
    if tag in aliases:
        raise BatchmlError(f"alias {tag!r} of model {name!r} points at {aliases[tag]}, which is not a committed "
                           f"version (versions: {', '.join(versions)}): batchml models promote "
                           f"{name}/{versions[-1]} --alias {tag}")
    known = f"versions: {', '.join(versions)}; aliases: {', '.join(aliases) or 'none'}"
    if layout.is_version(tag) or not layout.NAME_PATTERN.match(tag):  # promote would refuse it as an alias
        raise BatchmlError(f"model {name!r} has no version or alias {tag!r} ({known})")
    raise BatchmlError(
        f"model {name!r} has no version or alias {tag!r} ({known}). Promote one with: "
        f"batchml models promote {name}/{versions[-1]} --alias {tag}"
    )


def read_card(store: Store, mv: ModelVersion, needs: tuple[str, ...] = ()) -> ModelCard:
    """The version's card. ``needs`` (``records.SCORING_NEEDS``, ``MONITORING_NEEDS``): refuse, with the
    reason and the fix, a card that lacks what the caller relies on, rather than fail later far from
    the cause."""
    try:
        data = store.read_json(mv.card_path)
    except ValueError as e:  # not JSON
        raise BatchmlError(f"{store.url(mv.card_path)} is not valid JSON ({e}): restore it, or retrain {mv}") from e
    return ModelCard.checked(data, store.url(mv.card_path), needs)


def register(store: Store, name: str, model_file: str | bytes, card: ModelCard,
             files: dict[str, bytes] | None = None) -> ModelVersion:
    """Store a saved ``.keras`` file (its path or its bytes) and its card as the next
    version of ``name``; the card is written with that name and version. ``files``: more of
    the version's files by name (``layout.NOVELTY_FILE``), written before the card."""
    mv = _claim_version(store, name)
    if isinstance(model_file, str):
        with open(model_file, "rb") as f:
            model_file = f.read()
    store.write_bytes(mv.model_path, model_file)
    for file_name, data in (files or {}).items():
        store.write_bytes(f"{mv.prefix}/{file_name}", data)
    version = max(card.schema_version, ModelCard.SCHEMA_VERSION)  # a newer writer's card keeps its version
    card = replace(card, name=name, version=mv.version, schema_version=version)
    store.write_json(mv.card_path, card.to_dict())
    return mv


def _claim_version(store: Store, name: str) -> ModelVersion:
    """The next version number nobody has claimed, claimed atomically (``claim.json``): two
    registrations at the same instant get two versions, never one."""
    check_new_name("model", name)
    existing = [layout.version_number(v) for v in store.list(layout.model_prefix(name)) if layout.is_version(v)]
    number = max(existing, default=0) + 1
    claim = json.dumps({"claimed_by": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"}).encode()
    for _ in range(_CLAIM_TRIES):
        mv = ModelVersion(name, layout.version_tag(number))
        if store.create_or_same(mv.claim_path, claim):  # the claim carries a unique token
            return mv
        number += 1
    raise BatchmlError(f"could not claim a version of model {name!r} after {_CLAIM_TRIES} tries (up to "
                       f"v{number - 1}): the store refuses new files, or as many registrations run at once; "
                       "check the store, then register again")


_CLAIM_TRIES = 1000


def promote(store: Store, mv: ModelVersion, alias: str = DEFAULT_ALIAS) -> None:
    check_name("alias", alias)
    if layout.is_version(alias):
        raise BatchmlError(f"alias {alias!r} looks like a version: choose a name like {DEFAULT_ALIAS!r}")
    try:
        old = _checked_aliases(store, mv.name)  # an older file is written back in this version's shape
    except BatchmlError:  # a damaged file: promoting is how it is mended; its valid entries are kept
        old = _mended_aliases(store, mv.name)
    new = replace(old, aliases={**old.aliases, alias: mv.version},
                  schema_version=max(old.schema_version, Aliases.SCHEMA_VERSION))
    store.write_json(layout.aliases_path(mv.name), new.to_dict())


def _mended_aliases(store: Store, name: str) -> Aliases:
    """A damaged aliases file's valid entries (none where it cannot be read at all)."""
    try:
        found = Aliases.read(store, name).aliases
    except (ValueError, TypeError, AttributeError):
        found = {}
    kept = {a: t for a, t in found.items() if isinstance(t, str) and layout.is_version(t)} if isinstance(
        found, dict) else {}
    return Aliases.written({"aliases": kept})


def load_model(store: Store, mv: ModelVersion):
    """Load a registered version (see ``load_model_file``)."""
    return load_model_bytes(store.read_bytes(mv.model_path))


def model_bytes(model) -> bytes:
    """A Keras model as the bytes of its ``.keras`` file (Keras saves to paths only)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def load_model_bytes(data: bytes):
    """A model from the bytes of a ``.keras`` file (see ``load_model_file``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(data)
        return load_model_file(path)


def load_model_file(path: str):
    """Load a ``.keras`` file with Keras safe mode (no arbitrary code from the file);
    batchml's own layers and schedules are registered by importing their modules."""
    import keras

    import batchml.train.architectures
    import batchml.train.learning  # noqa: F401  (HorizontalFlip, OneCycle)

    return keras.saving.load_model(path, safe_mode=True)


def check_loadable(store: Store, mv: ModelVersion) -> None:
    """Load ``mv`` as scoring will, here, before any run file is written: a clear error if it cannot be."""
    from batchml.backend import filtered_stderr

    try:
        with filtered_stderr():  # the framework's start-up chatter stays out of the job's log
            load_model(store, mv)
    except BatchmlError:
        raise
    except Exception as exc:
        raise not_loadable(mv, exc) from None


def not_loadable(mv: ModelVersion, exc: BaseException) -> BatchmlError:
    return BatchmlError(
        f"model {mv} cannot be loaded for scoring ({type(exc).__name__}: {str(exc)[:300]}). Keras safe "
        "mode refuses Lambda layers and unregistered custom objects: retrain the model without them "
        "(or register their classes), then score. Nothing was written.")
