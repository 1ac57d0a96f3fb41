"""Loading rule files: YAML with source positions, ``extends`` chains, located errors.

``yaml.safe_load`` forgets where each value came from, keeps the last of two
duplicate keys silently, and expands aliases without limit. This loader composes
the YAML node graph itself and builds the Python values from it, so that it can

* record the ``file:line:column`` of every key and value,
* refuse duplicate keys, unsupported tags, recursive aliases and documents that
  expand (through aliases) to more than :data:`MAX_NODES` values or nest deeper
  than :data:`MAX_DEPTH` (the "billion laughs" bomb is refused after
  ``MAX_NODES`` steps, not after expanding it),
* follow ``extends`` to any depth, merging as docs/rules.md describes, and
* turn every pydantic error into a :class:`~tedepr_fx.errors.LocatedError` that
  names the file, line, column and key path, all errors of a file at once.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tedepr_fx.errors import LocatedError, Location, RuleError
from tedepr_fx.rules.schema import (
    Budget,
    Defaults,
    Match,
    Rule,
    RuleSet,
    Scoring,
    TTFactorization,
    TTModes,
    TuckerFactorization,
)

MAX_NODES = 100_000  # values a document may expand to; shipped files hold a few hundred
MAX_DEPTH = 64  # nesting depth of mappings and lists
MAX_CHARS = 1_000_000  # PyYAML's pure-Python scanner is slow on huge inputs; rule files are ~kB

Path_ = tuple[Any, ...]  # key path into the data, e.g. ("rules", 2, "factorize", "rank")

_MERGE_TAG = "tag:yaml.org,2002:merge"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MODELS: tuple[type[BaseModel], ...] = (
    RuleSet, Defaults, Scoring, Budget, Rule, Match, TTFactorization, TuckerFactorization, TTModes,
)
_KNOWN_KEYS = sorted({f.alias or n for m in _MODELS for n, f in m.model_fields.items()})


@dataclass
class _Doc:
    """Data of one (possibly merged) rule document with the source position of each part."""

    data: Any
    file: str
    values: dict[Path_, Location] = field(default_factory=dict)  # path -> where its value starts
    keys: dict[Path_, Location] = field(default_factory=dict)  # path -> where its key is written
    errors: list[LocatedError] = field(default_factory=list)

    def where(self, path: Path_, *, key: bool = False) -> Location:
        """Location of ``path``'s key (or value), else of the nearest enclosing value."""
        if key and path in self.keys:
            return self.keys[path]
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return Location(self.file)


class _Refused(Exception):
    """The document cannot be built at all (bomb, recursion, depth); carries one LocatedError."""

    def __init__(self, error: LocatedError):
        super().__init__(str(error))
        self.error = error


def format_path(path: Path_) -> str:
    """``("rules", 2, "factorize", "rank")`` -> ``"rules[2].factorize.rank"``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _loc(file: str, node: yaml.Node | yaml.Event) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Builds Python values from a composed YAML node graph, recording positions."""

    def __init__(self, loader: yaml.SafeLoader, doc: _Doc):
        self.loader, self.doc = loader, doc
        self.count = 0
        self.active: set[int] = set()  # nodes being built: meeting one again is a recursive alias

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _Refused(LocatedError(
                _loc(self.doc.file, node), format_path(path),
                f"the document expands to more than {MAX_NODES} values (aliases expanding to "
                "a huge tree?); refused"))
        if len(path) > MAX_DEPTH:
            raise _Refused(LocatedError(_loc(self.doc.file, node), format_path(path),
                                        f"nested deeper than {MAX_DEPTH} levels; refused"))
        if id(node) in self.active:
            raise _Refused(LocatedError(_loc(self.doc.file, node), format_path(path),
                                        "an alias refers to a node that contains it (recursive alias)"))
        self.doc.values[path] = _loc(self.doc.file, node)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except yaml.YAMLError as error:
                self._error(node, path, f"cannot read this value: {_problem(error)}")
                return None
        if node.tag not in (_SEQ_TAG, _MAP_TAG):
            self._error(node, path, f"unsupported YAML tag {node.tag!r}")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        result: dict[str, Any] = {}
        here = self.doc.values[path]
        # merge keys (<<: *base) first, so that the mapping's own keys override them
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    merged = self.build(source, path)
                    if not isinstance(merged, dict):
                        self._error(source, path, "'<<' (merge key) needs a mapping or a list of mappings")
                        continue
                    for k, v in merged.items():
                        result.setdefault(k, v)
        self.doc.values[path] = here  # building the merged sources recorded their own position
        first: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._error(key_node, path, "a key must be plain text, not a list or mapping")
                continue
            # the key as written: YAML 1.1 would turn keys such as `on` or `no` into booleans
            key = str(key_node.value)
            if key in first:
                prev = first[key].start_mark
                self._error(key_node, path + (key,),
                            f"duplicate key {key!r} (first at line {prev.line + 1}, column "
                            f"{prev.column + 1}); YAML would silently keep only the last one")
                continue
            first[key] = key_node
            self.doc.keys[path + (key,)] = _loc(self.doc.file, key_node)
            result[key] = self.build(value_node, path + (key,))
        return result

    def _error(self, node: yaml.Node, path: Path_, message: str) -> None:
        self.doc.errors.append(LocatedError(_loc(self.doc.file, node), format_path(path), message))


def _expanded_size(root: yaml.Node, file: str) -> None:
    """Refuse a node graph whose aliases expand beyond MAX_NODES values, before building it.

    Sizes are memoized per node, so this costs one visit per node as written, however
    large the expansion ("billion laughs" is refused in microseconds).
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_DEPTH:
            raise _Refused(LocatedError(_loc(file, node), "", f"nested deeper than {MAX_DEPTH} levels; refused"))
        if id(node) in active:
            raise _Refused(LocatedError(_loc(file, node), "",
                                        "an alias refers to a node that contains it (recursive alias)"))
        total = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            active.add(id(node))
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            for child in children:
                total = min(total + size(child, depth + 1), MAX_NODES + 1)
            active.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_NODES and depth == 0:
            raise _Refused(LocatedError(
                _loc(file, node), "",
                f"the document expands to more than {MAX_NODES} values (aliases expanding to a "
                "huge tree?); refused"))
        return total

    size(root, 0)


def _problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        return " ".join(p for p in (error.context, error.problem) if p) or str(error)
    return str(error)


def _check_depth(text: str, file: str) -> None:
    # PyYAML's composer recurses once per level: refuse deep nesting from the (iterative) event
    # stream before composing, rather than waiting for a slow RecursionError
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise RuleError(LocatedError(_loc(file, event), "", f"nested deeper than {MAX_DEPTH} levels; refused"))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _parse_yaml(text: str, file: str = "<string>") -> _Doc:
    """Parse YAML text into data with positions; raise RuleError for syntax errors and bombs."""
    if len(text) > MAX_CHARS:
        raise RuleError(LocatedError(Location(file), "", f"{len(text)} characters is too long for a rule "
                                                         f"file (at most {MAX_CHARS}); refused"))
    loader = yaml.SafeLoader(text)
    try:
        try:
            _check_depth(text, file)
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
            raise RuleError(LocatedError(where, "", f"invalid YAML: {_problem(error)}")) from None
        except yaml.YAMLError as error:
            raise RuleError(LocatedError(Location(file), "", f"invalid YAML: {error}")) from None
        except RecursionError:
            raise RuleError(LocatedError(Location(file), "", "invalid YAML: nested too deeply")) from None
        doc = _Doc(None, file)
        if node is None:
            doc.errors.append(LocatedError(Location(file, 1, 1), "",
                                           "the document is empty; a rule file needs 'version: 1' and 'rules:'"))
            return doc
        try:
            _expanded_size(node, file)
            doc.data = _Builder(loader, doc).build(node, ())
        except _Refused as refused:
            raise RuleError(refused.error) from None
        return doc
    finally:
        loader.dispose()


def _from_dict(data: Mapping[str, Any]) -> _Doc:
    # plain containers only: a dict input has no positions, its errors name "<dict>"
    def plain(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise RuleError(LocatedError(Location("<dict>"), "", f"nested deeper than {MAX_DEPTH} levels"))
        if isinstance(value, Mapping):
            return {str(k): plain(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v, depth + 1) for v in value]
        return value

    return _Doc(plain(data, 0), "<dict>")


# --- extends -------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleError(LocatedError(Location(str(path)), "", "no such file")) from None
    except IsADirectoryError:
        raise RuleError(LocatedError(Location(str(path)), "", "is a directory, not a rule file")) from None
    except UnicodeDecodeError as error:
        raise RuleError(LocatedError(Location(str(path)), "", f"is not UTF-8 text ({error.reason})")) from None
    except OSError as error:
        raise RuleError(LocatedError(Location(str(path)), "", f"cannot be read: {error.strerror}")) from None


def _resolve(doc: _Doc, base_dir: Path, chain: tuple[Path, ...]) -> _Doc:
    """Follow ``doc``'s ``extends`` (recursively) and return the merged document."""
    if not isinstance(doc.data, dict) or "extends" not in doc.data:
        return doc
    target = doc.data["extends"]
    at = ("extends",)
    if target is None:
        return doc
    if not isinstance(target, str) or not target.strip():
        doc.errors.append(LocatedError(doc.where(at), "extends",
                                       f"must be the path of a rule file; got {target!r}"))
        return doc
    path = (base_dir / target).resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
        doc.errors.append(LocatedError(doc.where(at), "extends", f"extends chain is cyclic: {cycle}"))
        return doc
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        doc.errors.append(LocatedError(doc.where(at), "extends", f"base file {target!r} {why} ({path})"))
        return doc
    try:
        base = _parse_yaml(_read(path), str(path))
    except RuleError as error:
        doc.errors.extend(error.errors)
        return doc
    base = _resolve(base, path.parent, chain + (path,))
    return _merge(doc, base)


def _copy_positions(dst: _Doc, src: _Doc, src_prefix: Path_, dst_prefix: Path_) -> None:
    n = len(src_prefix)
    for table_src, table_dst in ((src.values, dst.values), (src.keys, dst.keys)):
        for p, loc in table_src.items():
            if p[:n] == src_prefix:
                table_dst[dst_prefix + p[n:]] = loc


def _merge(child: _Doc, base: _Doc) -> _Doc:
    """Child's rules then the base's; defaults and scoring key by key, the child winning."""
    merged = _Doc({}, child.file, dict(child.values), dict(child.keys), child.errors + base.errors)
    if not isinstance(base.data, dict):
        if base.data is not None:
            merged.errors.append(LocatedError(base.where(()), "", "a base rule file must be a mapping"))
        merged.data = {k: v for k, v in child.data.items() if k != "extends"}
        return merged
    version = base.data.get("version")
    if type(version) is not int or version != 1:
        merged.errors.append(LocatedError(
            base.where(("version",)), "version",
            f"a base rule file needs 'version: 1' too; got {version!r}"))
    data = {k: v for k, v in child.data.items() if k != "extends"}
    rules, base_rules = child.data.get("rules"), base.data.get("rules")
    if "rules" not in child.data and "rules" in base.data:
        data["rules"] = base_rules
        _copy_positions(merged, base, ("rules",), ("rules",))
    elif isinstance(rules, list) and isinstance(base_rules, list):
        data["rules"] = rules + base_rules
        for j in range(len(base_rules)):
            _copy_positions(merged, base, ("rules", j), ("rules", len(rules) + j))
    for section in ("defaults", "scoring"):
        mine, theirs = child.data.get(section), base.data.get(section)
        if section not in child.data and section in base.data:
            data[section] = theirs
            _copy_positions(merged, base, (section,), (section,))
        elif isinstance(mine, dict) and isinstance(theirs, dict):
            data[section] = {**theirs, **mine}  # a budget given by the child replaces the base's whole
            for key in theirs:
                if key not in mine:
                    _copy_positions(merged, base, (section, key), (section, key))
    merged.data = data
    return merged


# --- validation ------------------------------------------------------------------------------------


def _walk(data: Any, loc: tuple[Any, ...]) -> Path_:
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


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: dict[str, Any]) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    ctx = error.get("ctx") or {}
    scalar = value is None or isinstance(value, (str, int, float, bool))
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (key: value lines); got {_shown(value)}"
    if kind == "list_type":
        return f"must be a list; got {_shown(value)}"
    if kind == "union_tag_not_found":
        return f"missing key {ctx.get('discriminator', 'format').strip(chr(39))!r}: one of 'tt', 'tucker'"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags')}; got {ctx.get('tag')!r}"
    msg = msg.removeprefix("Value error, ")
    msg = re.sub(r"^(Input|List|String|Dictionary|Value) should ", "must ", msg)
    if scalar and "got" not in msg:
        msg += f"; got {_shown(value)}"
    return msg


def _located(doc: _Doc, errors: list[dict[str, Any]]) -> list[LocatedError]:
    out: list[tuple[Path_, LocatedError]] = []
    for error in errors:
        if error["type"] == "duplicate_rule_name":
            continue  # reported from the raw data by _duplicate_names, even when a rule is invalid
        path = _walk(doc.data, error["loc"])
        kind = error["type"]
        if kind == "missing":
            key = error["loc"][-1]
            out.append((path + (key,), LocatedError(doc.where(path), format_path(path),
                                                    f"missing required key {key!r}")))
            continue
        if kind == "extra_forbidden":
            key = path[-1] if path else error["loc"][-1]
            close = difflib.get_close_matches(str(key), _KNOWN_KEYS, n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append((path, LocatedError(doc.where(path, key=True), format_path(path),
                                           f"unknown key {key!r}{hint}")))
            continue
        if kind in ("union_tag_invalid",) and isinstance(error.get("input"), dict):
            path = path + ("format",)
        ctx = error.get("ctx") or {}
        suffixes = ctx.get("at") or [()]
        for suffix in suffixes:
            full = path + tuple(suffix)
            where = doc.where(full, key=bool(suffix) and suffix != ("format",))
            out.append((full, LocatedError(where, format_path(full), _message(error))))
    # a union error on a value (e.g. "must be 'auto'") is noise when a branch went deeper
    out = [(p, e) for p, e in out
           if not any(len(q) > len(p) and q[:len(p)] == p for q, _ in out)
           or not e.message.startswith("must be '")]
    merged: dict[tuple[str, str], LocatedError] = {}
    for _, e in out:
        k = (str(e.location), e.path)
        if k in merged and e.message not in merged[k].message:
            # union branches: "must be a valid string; got 5" + "must be a list; got 5"
            head, _, got = merged[k].message.partition("; got ")
            body, _, got2 = e.message.partition("; got ")
            text = f"{head} or {body.removeprefix('must be ')}" + (f"; got {got}" if got == got2 else "")
            merged[k] = LocatedError(e.location, e.path, text)
        elif k not in merged:
            merged[k] = e
    return list(merged.values())


def _duplicate_names(doc: _Doc) -> list[LocatedError]:
    rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
    if not isinstance(rules, list):
        return []
    seen: dict[str, int] = {}
    out = []
    for i, rule in enumerate(rules):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            first = doc.where(("rules", seen[name], "name"))
            out.append(LocatedError(doc.where(("rules", i, "name")), f"rules[{i}].name",
                                    f"duplicate rule name {name!r} (first used by rules[{seen[name]}] "
                                    f"at {first})"))
        else:
            seen[name] = i
    return out


def _sort_key(error: LocatedError) -> tuple[str, int, int]:
    loc = error.location
    return (loc.file, loc.line or 0, loc.column or 0)


def _validate(doc: _Doc, source: str | None) -> RuleSet:
    errors = list(doc.errors)
    if not isinstance(doc.data, dict):
        if doc.data is not None:
            errors.append(LocatedError(doc.where(()), "",
                                       "a rule file must be a mapping with the keys 'version' and "
                                       f"'rules'; got {_shown(doc.data)}"))
        raise RuleError(sorted(errors, key=_sort_key))
    errors.extend(_duplicate_names(doc))
    data = {k: v for k, v in doc.data.items() if k != "extends"}
    ruleset = None
    try:
        ruleset = RuleSet.model_validate(data)
    except ValidationError as error:
        errors.extend(_located(doc, error.errors()))
    if errors or ruleset is None:
        raise RuleError(sorted(errors, key=_sort_key))
    ruleset._source = source
    return ruleset


# --- public --------------------------------------------------------------------------------------


def parse_rules(text: str, file: str = "<string>", base_dir: str | os.PathLike[str] | None = None) -> RuleSet:
    """Validate YAML text; ``extends`` is resolved against ``base_dir`` (default: cwd)."""
    doc = _parse_yaml(text, file)
    here = Path(base_dir) if base_dir is not None else Path.cwd()
    chain = (Path(file).resolve(),) if file not in ("<string>", "<dict>") else ()
    doc = _resolve(doc, here, chain)
    return _validate(doc, file if chain else None)


def _looks_like_path(text: str) -> bool:
    if "\n" in text or not text.strip():
        return False
    if text.endswith((".yaml", ".yml")):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def load_rules(rules: RuleSet | str | os.PathLike[str] | Mapping[str, Any]) -> RuleSet:
    """Load and validate a rule set.

    Parameters
    ----------
    rules
        A :class:`RuleSet` (returned as is); a path (``pathlib.Path``, or a ``str``
        naming an existing file or ending in ``.yaml`` / ``.yml``); YAML text (any
        other ``str``); or a ``dict`` with the same structure as a file.

    Returns
    -------
    RuleSet
        With ``extends`` resolved (child's rules first, then the base's).

    Raises
    ------
    RuleError
        Listing every problem found, each with ``file:line:column`` (``<dict>`` and a
        key path for dict input) and the offending key.
    """
    if isinstance(rules, RuleSet):
        return rules
    if isinstance(rules, (str, os.PathLike)) and (isinstance(rules, os.PathLike) or _looks_like_path(rules)):
        path = Path(rules)
        return parse_rules(_read(path), str(path), path.resolve().parent)
    if isinstance(rules, str):
        return parse_rules(rules)
    if isinstance(rules, Mapping):
        doc = _resolve(_from_dict(rules), Path.cwd(), ())
        return _validate(doc, None)
    raise RuleError(LocatedError(
        Location("<rules>"), "rules",
        f"must be a path, YAML text, a dict or a RuleSet; got {type(rules).__name__}"))
