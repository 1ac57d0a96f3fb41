"""The base of every model of the rule language: closed, strict, comparable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Strict, closed models; equality ignores private attributes (source file, compiled regex).

    Strict: a YAML ``1`` is an int, ``1.0`` a float, and ``true`` is never a number.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]
