"""A rule document: its data, where each part of it is written, and the errors found so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tedepr_fx.errors import LocatedError, Location

KeyPath = tuple[Any, ...]  # into the data, e.g. ("rules", 2, "factorize", "rank")


def format_path(path: KeyPath) -> str:
    """``("rules", 2, "factorize", "rank")`` -> ``"rules[2].factorize.rank"``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Document:
    """Data of one (possibly merged) rule document with the source position of each part.

    ``values`` maps a key path to where its value starts, ``keys`` to where its key is
    written; a document built from a dict has neither, and its errors name the file only.
    """

    data: Any
    file: str
    values: dict[KeyPath, Location] = field(default_factory=dict)
    keys: dict[KeyPath, Location] = field(default_factory=dict)
    errors: list[LocatedError] = field(default_factory=list)

    def where(self, path: KeyPath, *, key: bool = False) -> Location:
        """Location of ``path``'s key (or value), else of the nearest enclosing value."""
        if key and path in self.keys:
            return self.keys[path]
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return Location(self.file)

    def error(self, path: KeyPath, message: str, *, key: bool = False) -> LocatedError:
        """A :class:`LocatedError` for ``path`` (at its key when ``key``)."""
        return LocatedError(self.where(path, key=key), format_path(path), message)
