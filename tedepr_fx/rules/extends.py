"""``extends``: following a chain of base rule files and merging them, positions included.

The child's rules come first, then the base's; ``defaults`` and ``scoring`` merge
key by key, the child winning (a ``budget`` the child gives replaces the base's
whole). Every value keeps the position of the file it was written in.
"""

from __future__ import annotations

from pathlib import Path

from tedepr_fx.errors import RuleError
from tedepr_fx.rules.document import Document, KeyPath
from tedepr_fx.rules.yaml_source import parse_yaml, read_text

_KEYED_SECTIONS = ("defaults", "scoring")  # merged key by key


def resolve_extends(doc: Document, base_dir: Path, chain: tuple[Path, ...] = ()) -> Document:
    """Follow ``doc``'s ``extends`` (recursively) and return the merged document.

    ``chain`` holds the files already being resolved, to refuse cycles. Problems
    (missing base, cycle, errors in a base) are collected in the result's ``errors``.
    """
    if not isinstance(doc.data, dict) or doc.data.get("extends") is None:
        return doc
    target = doc.data["extends"]
    if not isinstance(target, str) or not target.strip():
        doc.errors.append(doc.error(("extends",), f"must be the path of a rule file; got {target!r}"))
        return doc
    try:
        path = (base_dir / target).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (Python < 3.13)
        doc.errors.append(doc.error(("extends",), f"base file {target!r} cannot be resolved ({error})"))
        return doc
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
        doc.errors.append(doc.error(("extends",), f"extends chain is cyclic: {cycle}"))
        return doc
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        doc.errors.append(doc.error(("extends",), f"base file {target!r} {why} ({path})"))
        return doc
    try:
        base = parse_yaml(read_text(path), str(path))
    except RuleError as error:
        doc.errors.extend(error.errors)
        return doc
    return _merge(doc, resolve_extends(base, path.parent, chain + (path,)))


def _merge(child: Document, base: Document) -> Document:
    """Child's rules then the base's; ``defaults`` and ``scoring`` key by key, the child winning."""
    merged = Document({}, child.file, dict(child.values), dict(child.keys), child.errors + base.errors)
    data = {k: v for k, v in child.data.items() if k != "extends"}
    merged.data = data
    if not isinstance(base.data, dict):
        if base.data is not None:
            merged.errors.append(base.error((), "a base rule file must be a mapping"))
        return merged
    version = base.data.get("version")
    if type(version) is not int or version != 1:
        merged.errors.append(base.error(("version",), f"a base rule file needs 'version: 1' too; got {version!r}"))
    rules, base_rules = child.data.get("rules"), base.data.get("rules")
    if "rules" not in child.data and "rules" in base.data:
        data["rules"] = base_rules
        _copy_positions(merged, base, ("rules",), ("rules",))
    elif isinstance(rules, list) and isinstance(base_rules, list):
        data["rules"] = rules + base_rules
        for j in range(len(base_rules)):
            _copy_positions(merged, base, ("rules", j), ("rules", len(rules) + j))
    for section in _KEYED_SECTIONS:
        mine, theirs = child.data.get(section), base.data.get(section)
        if section not in child.data and section in base.data:
            data[section] = theirs
            _copy_positions(merged, base, (section,), (section,))
        elif isinstance(mine, dict) and isinstance(theirs, dict):
            data[section] = {**theirs, **mine}  # a budget given by the child replaces the base's whole
            for key in theirs:
                if key not in mine:
                    _copy_positions(merged, base, (section, key), (section, key))
    return merged


def _copy_positions(dst: Document, src: Document, src_prefix: KeyPath, dst_prefix: KeyPath) -> None:
    n = len(src_prefix)
    for table_src, table_dst in ((src.values, dst.values), (src.keys, dst.keys)):
        for p, loc in table_src.items():
            if p[:n] == src_prefix:
                table_dst[dst_prefix + p[n:]] = loc
