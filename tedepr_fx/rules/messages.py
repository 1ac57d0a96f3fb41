"""Located messages from pydantic's structured errors.

Each error of :meth:`pydantic.ValidationError.errors` is read by its ``type``,
``loc``, ``ctx`` and ``input``, never by its English ``msg`` (which pydantic may
reword): the message says what the value must be, and what it got. The errors the
schema raises itself (:class:`~pydantic_core.PydanticCustomError`) carry their own
text; those that must point at a key inside the failing value carry its path
suffixes in ``ctx["at"]`` (and one text per suffix in ``ctx["each"]``).
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails
from pydantic_core.core_schema import ErrorType

from tedepr_fx.errors import LocatedError
from tedepr_fx.names import FORMAT_NAMES
from tedepr_fx.rules.document import Document, KeyPath, format_path
from tedepr_fx.rules.schema import RuleSet

_PYDANTIC_TYPES = frozenset(typing.get_args(ErrorType))


def _models(model: type[BaseModel]) -> set[type[BaseModel]]:
    """``model`` and every model its fields hold, through unions, lists and ``Annotated``."""
    found = {model}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in found:
            found.update(_models(annotation))
        for arg in typing.get_args(annotation):
            visit(arg)

    for info in model.model_fields.values():
        visit(info.annotation)
    return found


_KNOWN_KEYS = sorted({f.alias or n for m in _models(RuleSet) for n, f in m.model_fields.items()})


@dataclass(frozen=True)
class _Message:
    """``must be <one of must_be>; got <got>``, or a text of its own."""

    must_be: tuple[str, ...] = ()
    text: str = ""
    got: str | None = None

    def __str__(self) -> str:
        head = "must be " + " or ".join(self.must_be) if self.must_be else self.text
        return head if self.got is None else f"{head}; got {self.got}"

    def either(self, other: _Message) -> _Message:
        """The two alternatives of a union: ``must be a string or a list``."""
        alternatives = self.must_be + tuple(m for m in other.must_be if m not in self.must_be)
        return _Message(alternatives, got=self.got if self.got == other.got else None)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _must_be(what: str | Callable[[dict[str, Any]], str], *, always_got: bool = False
             ) -> Callable[[ErrorDetails], _Message]:
    def build(error: ErrorDetails) -> _Message:
        value = error.get("input")
        text = what if isinstance(what, str) else what(error.get("ctx") or {})
        return _Message((text,), got=_shown(value) if always_got or _scalar(value) else None)
    return build


def _too_short(error: ErrorDetails) -> _Message:
    n = (error.get("ctx") or {}).get("min_length")
    return _Message(text=f"must have at least {n} item{'s' if n != 1 else ''}", got=_shown(error.get("input")))


def _too_long(error: ErrorDetails) -> _Message:
    n = (error.get("ctx") or {}).get("max_length")
    return _Message(text=f"must have at most {n} item{'s' if n != 1 else ''}", got=_shown(error.get("input")))


def _tag_not_found(error: ErrorDetails) -> _Message:
    key = str((error.get("ctx") or {}).get("discriminator", "format")).strip("'")
    return _Message(text=f"missing key {key!r}: one of {', '.join(map(repr, FORMAT_NAMES))}")


def _tag_invalid(error: ErrorDetails) -> _Message:
    ctx = error.get("ctx") or {}
    return _Message(text=f"must be one of {ctx.get('expected_tags')}", got=repr(ctx.get("tag")))


def _raised(error: ErrorDetails) -> _Message:
    return _Message(text=str((error.get("ctx") or {}).get("error", "is invalid")))


_MAPPING = _must_be("a mapping (key: value lines)", always_got=True)
_LIST = _must_be("a list", always_got=True)
_INT = _must_be("an int")
_NUMBER = _must_be("a number")
# pydantic's own error types: what the value must be, from the type and its context
_BY_TYPE: dict[str, Callable[[ErrorDetails], _Message]] = {
    "model_type": _MAPPING, "model_attributes_type": _MAPPING, "dict_type": _MAPPING,
    "mapping_type": _MAPPING, "list_type": _LIST, "tuple_type": _LIST,
    "int_type": _INT, "int_parsing": _INT, "int_from_float": _INT,
    "float_type": _NUMBER, "float_parsing": _NUMBER,
    "finite_number": _must_be("a finite number"),
    "bool_type": _must_be("true or false"), "bool_parsing": _must_be("true or false"),
    "string_type": _must_be("a string"),
    "literal_error": _must_be(lambda ctx: str(ctx.get("expected"))),
    "greater_than": _must_be(lambda ctx: f"greater than {ctx.get('gt')}"),
    "greater_than_equal": _must_be(lambda ctx: f"at least {ctx.get('ge')}"),
    "less_than": _must_be(lambda ctx: f"less than {ctx.get('lt')}"),
    "less_than_equal": _must_be(lambda ctx: f"at most {ctx.get('le')}"),
    "too_short": _too_short, "too_long": _too_long,
    "union_tag_not_found": _tag_not_found, "union_tag_invalid": _tag_invalid,
    "value_error": _raised, "assertion_error": _raised,
}


def _message(error: ErrorDetails, each: int) -> _Message:
    kind = error["type"]
    if kind in _BY_TYPE:
        return _BY_TYPE[kind](error)
    if kind not in _PYDANTIC_TYPES:  # the schema's own error: its text is ours
        texts = (error.get("ctx") or {}).get("each")
        return _Message(text=texts[each] if texts else error["msg"])
    # a type this table does not know yet: pydantic's text, as it is
    value = error.get("input")
    return _Message(text=error["msg"], got=_shown(value) if _scalar(value) else None)


def _walk(data: Any, loc: tuple[int | str, ...]) -> KeyPath:
    """The part of a pydantic ``loc`` that exists in ``data`` (union branch names are skipped)."""
    path: list[Any] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and isinstance(part, str) and part in cur:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            cur = cur[part]
    return tuple(path)


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1, cutoff=0.75)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


@dataclass(frozen=True)
class _Found:
    path: KeyPath
    at_key: bool  # located at the key rather than at its value
    message: _Message
    kind: str
    reach: KeyPath  # how deep into the data the error went (a missing key: the key's path)


def _found(doc: Document, error: ErrorDetails) -> list[_Found]:
    """Where one pydantic error belongs in the document, and what it says there."""
    kind, loc = error["type"], error["loc"]
    path = _walk(doc.data, loc)
    if kind == "missing":  # at the mapping that lacks the key
        text = f"missing required key {loc[-1]!r}"
        return [_Found(path, False, _Message(text=text), kind, path + (loc[-1],))]
    if kind == "extra_forbidden":
        key = path[-1] if path else loc[-1]
        return [_Found(path, True, _Message(text=_unknown_key(str(key))), kind, path)]
    if kind == "duplicate_rule_name":
        ctx = error.get("ctx") or {}
        first = doc.where(("rules", ctx["first"], "name"))
        text = f"duplicate rule name {ctx['name']!r} (first used by rules[{ctx['first']}] at {first})"
        return [_Found(path, False, _Message(text=text), kind, path)]
    if kind == "union_tag_invalid" and isinstance(error.get("input"), dict):
        path = path + ("format",)  # the tag's value, not the mapping
    suffixes = (error.get("ctx") or {}).get("at") or [()]
    return [_Found(path + tuple(s), bool(s), _message(error, i), kind, path + tuple(s))
            for i, s in enumerate(suffixes)]


def _deeper(a: KeyPath, b: KeyPath) -> bool:
    return len(a) > len(b) and a[:len(b)] == b


def located_errors(doc: Document, errors: Sequence[ErrorDetails]) -> list[LocatedError]:
    """One :class:`LocatedError` per problem pydantic found in ``doc``'s data.

    A union's alternatives at one place merge into one message ("must be 'auto' or a
    mapping"); an alternative whose type did not fit is dropped where another went deeper
    (``type: [Linear, 3]`` is a list with a bad item, not a value that must be a string).
    """
    found = [f for error in errors for f in _found(doc, error)]
    found = [f for f in found if not f.message.must_be or not any(_deeper(g.reach, f.path) for g in found)]
    merged: list[_Found] = []
    for f in found:
        same = [i for i, g in enumerate(merged) if (g.path, g.at_key) == (f.path, f.at_key)]
        if same and f.message.must_be and merged[same[0]].message.must_be:
            g = merged[same[0]]
            merged[same[0]] = _Found(g.path, g.at_key, g.message.either(f.message), g.kind, g.reach)
        elif not any(str(merged[i].message) == str(f.message) for i in same):
            merged.append(f)
    return [LocatedError(doc.where(f.path, key=f.at_key), format_path(f.path), str(f.message)) for f in merged]
