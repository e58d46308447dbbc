"""What every record shares: ``to_dict``/``from_dict``, the schema version and its one upgrade
step, and the one test of "absent" (None, or a table's NaN)."""

from __future__ import annotations

import numbers
from dataclasses import fields
from typing import Any, ClassVar


class _Record:
    """``to_dict``/``from_dict`` for a dataclass with ``extra`` and, where it is a whole file or
    table row, ``schema_version``. ``PARTS`` names the fields that hold a nested record."""

    SCHEMA_VERSION: ClassVar[int] = 1
    PARTS: ClassVar[dict[str, type[_Record]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out = {name: _plain(getattr(self, name)) for name in self.columns()}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The record of a file or table row as read; an older shape is upgraded first (``_upgrade``)."""
        names = cls.columns()
        versioned = "schema_version" in names
        version = _version(data.get("schema_version")) if versioned else cls.SCHEMA_VERSION
        if version < cls.SCHEMA_VERSION:
            data = cls._upgrade(dict(data), version)
        # a key older writers lacked reads as None, as does the NaN a table fills into their rows
        known = {name: None if is_absent(v := data.get(name)) else v for name in names}
        if versioned:
            known["schema_version"] = version  # as written: 0 for files written before records had one
        for name, part in cls.PARTS.items():
            if isinstance(known[name], dict):
                known[name] = part.from_dict(known[name])
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def _upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """``data`` written at an older ``version`` in this version's shape. A record whose shape
        changed overrides this; it is the only code that knows the older shapes. It may be given its
        own output again (a record keeps the version it was read as, so one written back unchanged
        reads as that version): leave a shape already upgraded as it is."""
        return data

    @classmethod
    def written(cls, data: dict[str, Any]):
        """The record this code writes now, of the current schema version."""
        return cls.from_dict({**data, "schema_version": cls.SCHEMA_VERSION})

    @classmethod
    def columns(cls) -> list[str]:
        """The keys this record knows, in the order they are written."""
        return [f.name for f in fields(cls) if f.name != "extra"]


def is_absent(value: Any) -> bool:
    """A value a reader treats as missing: None, or the NaN a table fills into rows that lack a column."""
    return value is None or (isinstance(value, float) and value != value)


def _version(value: Any) -> int:
    """The schema version a file says it has: 0 where it says none (absent, None, a table's NaN)."""
    return int(value) if isinstance(value, numbers.Real) and not is_absent(value) else 0  # numpy's too


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, _Record) else value
