"""What makes a result type data: `to_dict()` (what results.json holds) and `from_dict()` (read
back from it, so that the report renders from results.json alone), for the dataclasses of
results/."""
from __future__ import annotations

import types
import typing
from dataclasses import fields


class Data:
    """to_dict() and from_dict() of a result dataclass. JSON has no tuples and only str keys:
    from_dict gives back what the annotations say (nested results, tuples, int keys)."""

    DERIVED = ()  # properties that to_dict adds for readers of results.json; from_dict skips them

    def to_dict(self) -> dict:
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        return data | {name: getattr(self, name) for name in self.DERIVED}

    @classmethod
    def from_dict(cls, data: dict):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _typed(hints[f.name], data[f.name]) for f in fields(cls)
                      if f.name in data})


def _plain(value):
    if isinstance(value, Data):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _typed(hint, value):
    """`value`, read from JSON, as the annotation `hint` says."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):  # X | None
        return _typed(next(a for a in args if a is not type(None)), value)
    if isinstance(hint, type) and issubclass(hint, Data):
        return hint.from_dict(value)
    if origin is list:
        return [_typed(args[0], v) for v in value]
    if hint is tuple or origin is tuple:
        return tuple(value)
    if origin is dict:
        return {args[0](k): _typed(args[1], v) for k, v in value.items()}
    return value
