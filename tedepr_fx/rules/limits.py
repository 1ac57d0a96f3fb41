"""The size limits of a rule document, one defence per hazard.

* **Size of a file** (:data:`MAX_BYTES`): only regular files are read, and one larger than
  this is refused before it is read (``yaml_source.read_text``).
* **Length** (:func:`check_length`): PyYAML's pure-Python scanner is slow on huge
  inputs, so text longer than :data:`MAX_CHARS` is refused before it is scanned.
* **Expansion, nesting and recursion** (:func:`check_events`): one pass over the
  parser's event stream, which is iterative and never expands an alias, measures
  the document as it *would* be once aliases are expanded. It refuses documents
  that expand to more than :data:`MAX_NODES` values (the "billion laughs" bomb is
  refused in microseconds), that nest deeper than :data:`MAX_DEPTH` mappings and
  lists (PyYAML's composer and the loader recurse once per level), and aliases that
  refer to a node containing them. After it, composing and building are safe.
* **Nesting of a Python dict** (:func:`plain_data`): the dict input has no events;
  copying it refuses nesting deeper than :data:`MAX_DEPTH` (and so self-containing dicts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tedepr_fx.errors import LocatedError, Location, RuleError

MAX_CHARS = 1_000_000  # rule files are a few kB
MAX_BYTES = 4 * MAX_CHARS  # a file is refused above this size before it is read (UTF-8: <= 4 bytes a character)
MAX_NODES = 100_000  # values a document may expand to; shipped files hold a few hundred
MAX_DEPTH = 64  # nesting depth of mappings and lists


def check_length(text: str, file: str) -> None:
    """Refuse text longer than :data:`MAX_CHARS` characters."""
    if len(text) > MAX_CHARS:
        raise RuleError(LocatedError(Location(file), "", f"{len(text)} characters is too long for a rule "
                                                         f"file (at most {MAX_CHARS}); refused"))


def mark_location(file: str, mark: yaml.Mark) -> Location:
    """The 1-based location of a PyYAML mark (0-based)."""
    return Location(file, mark.line + 1, mark.column + 1)


@dataclass
class _Open:
    """A mapping or list whose end event has not come yet."""

    anchor: str | None
    count_before: int  # expanded values counted before this collection started
    height: int = 1  # nesting depth of the collection's expanded contents, itself included


def check_events(text: str, file: str) -> None:
    """Refuse alias bombs, deep nesting and recursive aliases, from the event stream.

    Raises
    ------
    RuleError
        For one of those hazards, located where it is written (a bomb at the document).
    yaml.YAMLError
        For invalid YAML (the caller reports it).
    """
    # per anchor, once its node is complete: (values it expands to, nesting depth)
    done: dict[str, tuple[int, int]] = {}
    stack: list[_Open] = []
    count = 0
    start: Any = None  # where the document's first node is written (a yaml.Mark)

    def refuse(mark: Any, message: str) -> RuleError:
        return RuleError(LocatedError(mark_location(file, mark), "", message))

    def add(size: int, height: int, event: yaml.Event) -> None:
        nonlocal count
        if len(stack) + height > MAX_DEPTH:
            raise refuse(event.start_mark, f"nested deeper than {MAX_DEPTH} levels; refused")
        count += size
        if count > MAX_NODES:
            raise refuse(start or event.start_mark, f"the document expands to more than {MAX_NODES} values "
                                                    "(aliases expanding to a huge tree?); refused")
        if stack:
            stack[-1].height = max(stack[-1].height, height + 1)

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            done, start = {}, None  # anchors are local to a document
        elif isinstance(event, yaml.NodeEvent) and start is None:
            start = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            if any(frame.anchor == event.anchor for frame in stack):
                raise refuse(event.start_mark, "an alias refers to a node that contains it (recursive alias)")
            size, height = done.get(event.anchor or "", (1, 0))  # an undefined alias: the composer reports it
            add(size, height, event)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                done[event.anchor] = (1, 0)
            add(1, 0, event)
        elif isinstance(event, yaml.CollectionStartEvent):
            add(1, 1, event)
            stack.append(_Open(event.anchor, count - 1))
        elif isinstance(event, yaml.CollectionEndEvent):
            frame = stack.pop()
            if frame.anchor is not None:
                done[frame.anchor] = (count - frame.count_before, frame.height)
            if stack:
                stack[-1].height = max(stack[-1].height, frame.height + 1)


def plain_data(data: Mapping[str, Any], file: str = "<dict>") -> dict[str, Any]:
    """A copy of ``data`` made of dicts (with str keys), lists and scalars only.

    Raises
    ------
    RuleError
        When ``data`` nests deeper than :data:`MAX_DEPTH` (or contains itself).
    """
    def plain(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise RuleError(LocatedError(Location(file), "", f"nested deeper than {MAX_DEPTH} levels; refused"))
        if isinstance(value, Mapping):
            return {str(k): plain(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v, depth + 1) for v in value]
        return value

    result: dict[str, Any] = plain(data, 0)
    return result
