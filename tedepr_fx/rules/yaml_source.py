"""Reading a rule file's YAML into a :class:`Document` that remembers where each value is written.

``yaml.safe_load`` forgets where each value came from, keeps the last of two
duplicate keys silently, and expands aliases without limit. This module lets
:mod:`~tedepr_fx.rules.limits` measure the event stream first, then composes the
YAML node graph and builds the Python values from it itself, so that it can record
the ``file:line:column`` of every key and value and refuse duplicate keys and
unsupported tags.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.reader import ReaderError

from tedepr_fx.errors import LocatedError, Location, RuleError
from tedepr_fx.rules.document import Document, KeyPath, format_path
from tedepr_fx.rules.limits import MAX_BYTES, check_events, check_length, mark_location

_MERGE_TAG = "tag:yaml.org,2002:merge"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"


def read_text(path: Path) -> str:
    """The UTF-8 text of a rule file; :class:`RuleError` naming the file if it cannot be read.

    Reading is bounded: only a regular file is read (a FIFO would block forever, a device
    such as ``/dev/zero`` never ends), and one larger than :data:`MAX_BYTES` is refused
    before a byte is read. The file is opened without blocking and checked through its
    descriptor, so what is checked is what is read.
    """
    def refuse(message: str) -> RuleError:
        return RuleError(LocatedError(Location(str(path)), "", message))

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise refuse("no such file") from None
    except IsADirectoryError:
        raise refuse("is a directory, not a rule file") from None
    except OSError as error:
        raise refuse(f"cannot be read: {error.strerror or error}") from None
    info = os.fstat(fd)
    problem = ("is a directory, not a rule file" if stat.S_ISDIR(info.st_mode)
               else f"is not a regular file ({_kind(info.st_mode)}); a rule file must be one"
               if not stat.S_ISREG(info.st_mode)
               else f"{info.st_size} bytes is too large for a rule file (at most {MAX_BYTES}); refused"
               if info.st_size > MAX_BYTES else "")
    if problem:
        os.close(fd)
        raise refuse(problem)
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(MAX_BYTES + 1)
        except OSError as error:
            raise refuse(f"cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_BYTES:  # it grew after the check
        raise refuse(f"is too large for a rule file (more than {MAX_BYTES} bytes); refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise RuleError(LocatedError(Location(str(path), line, column), "",
                                     f"is not UTF-8 text ({error.reason})")) from None


def _kind(mode: int) -> str:
    for test, words in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a plain file"


def parse_yaml(text: str, file: str = "<string>") -> Document:
    """Parse YAML text into data with positions.

    Raises
    ------
    RuleError
        For text that is not YAML, or that :mod:`~tedepr_fx.rules.limits` refuses.
        Problems of single values (duplicate keys, tags) are collected in ``errors``.
    """
    check_length(text, file)
    loader: yaml.SafeLoader | None = None
    try:
        try:
            check_events(text, file)
            loader = yaml.SafeLoader(text)
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            where = mark_location(file, mark) if mark else Location(file)
            raise RuleError(LocatedError(where, "", f"invalid YAML: {_problem(error)}")) from None
        except ReaderError as error:  # a NUL byte or another control character
            raise RuleError(LocatedError(_offset_location(text, file, error.position), "",
                                         f"invalid YAML: character U+{error.character:04X} is not allowed "
                                         "in YAML text (a binary file?)")) from None
        except yaml.YAMLError as error:
            raise RuleError(LocatedError(Location(file), "", f"invalid YAML: {error}")) from None
        doc = Document(None, file)
        if node is None:
            doc.errors.append(LocatedError(Location(file, 1, 1), "",
                                           "the document is empty; a rule file needs 'version: 1' and 'rules:'"))
            return doc
        doc.data = _Builder(loader, doc).build(node, ())
        return doc
    finally:
        if loader is not None:
            loader.dispose()


def _offset_location(text: str, file: str, offset: int) -> Location:
    """The 1-based line and column of character ``offset`` of ``text``."""
    return Location(file, text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1)


def _problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        return " ".join(p for p in (error.context, error.problem) if p) or str(error)
    return str(error)


class _Builder:
    """Builds Python values from a composed (and measured) YAML node graph, recording positions."""

    def __init__(self, loader: yaml.SafeLoader, doc: Document) -> None:
        self.loader, self.doc = loader, doc

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.doc.values[path] = mark_location(self.doc.file, node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except yaml.YAMLError as error:
                self._error(node, path, f"cannot read this value: {_problem(error)}")
                return None
        if node.tag not in (_SEQ_TAG, _MAP_TAG):
            self._error(node, path, f"unsupported YAML tag {node.tag!r}")
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        assert isinstance(node, yaml.MappingNode)
        return self._mapping(node, path)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
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
            self.doc.keys[path + (key,)] = mark_location(self.doc.file, key_node.start_mark)
            result[key] = self.build(value_node, path + (key,))
        return result

    def _error(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        self.doc.errors.append(LocatedError(mark_location(self.doc.file, node.start_mark),
                                            format_path(path), message))
