"""Loading rule files: the public entry points.

:func:`load_rules` accepts a path, YAML text, a dict or a :class:`RuleSet`; the
work is done by one module per step:

* :mod:`~tedepr_fx.rules.yaml_source` reads the YAML, remembering the
  ``file:line:column`` of every key and value, after
  :mod:`~tedepr_fx.rules.limits` has refused oversized or bomb-like documents;
* :mod:`~tedepr_fx.rules.extends` follows ``extends`` to any depth and merges;
* the pydantic models of :mod:`~tedepr_fx.rules.schema` validate, and
  :mod:`~tedepr_fx.rules.messages` turns every error into a
  :class:`~tedepr_fx.errors.LocatedError`, all errors of a file at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tedepr_fx.errors import LocatedError, Location, RuleError
from tedepr_fx.rules.document import Document
from tedepr_fx.rules.extends import resolve_extends
from tedepr_fx.rules.limits import MAX_CHARS, MAX_DEPTH, MAX_NODES, plain_data
from tedepr_fx.rules.messages import located_errors
from tedepr_fx.rules.schema import RuleSet
from tedepr_fx.rules.yaml_source import parse_yaml, read_text

__all__ = ["MAX_CHARS", "MAX_DEPTH", "MAX_NODES", "load_rules", "parse_rules"]


def parse_rules(text: str, file: str = "<string>", base_dir: str | os.PathLike[str] | None = None) -> RuleSet:
    """Validate YAML text; ``extends`` is resolved against ``base_dir`` (default: cwd)."""
    doc = parse_yaml(text, file)
    here = Path(base_dir) if base_dir is not None else Path.cwd()
    chain = (Path(file).resolve(),) if file not in ("<string>", "<dict>") else ()
    return _validate(resolve_extends(doc, here, chain), file if chain else None)


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
    if isinstance(rules, os.PathLike) or (isinstance(rules, str) and _looks_like_path(rules)):
        path = _shipped(Path(rules))
        return parse_rules(read_text(path), str(path), path.resolve().parent)
    if isinstance(rules, str):
        return parse_rules(rules)
    if isinstance(rules, Mapping):
        return _validate(resolve_extends(Document(plain_data(rules), "<dict>"), Path.cwd()), None)
    raise RuleError(LocatedError(
        Location("<rules>"), "rules",
        f"must be a path, YAML text, a dict or a RuleSet; got {type(rules).__name__}"))


def _shipped(path: Path) -> Path:
    """``path``, or the shipped policy it names when it is ``rules/<policy>.yaml`` and no such
    file exists here: the documented ``transform(model, "rules/transformer.yaml")`` then works
    from any directory, and a user's own ``rules/`` folder always wins."""
    from tedepr_fx import policies

    if path.exists() or path.parent != Path("rules") or path.suffix != ".yaml" or path.stem not in policies.names():
        return path
    return policies.path(path.stem)


def _looks_like_path(text: str) -> bool:
    if "\n" in text or not text.strip():
        return False
    if text.endswith((".yaml", ".yml")):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _validate(doc: Document, source: str | None) -> RuleSet:
    errors = list(doc.errors)
    if not isinstance(doc.data, dict):
        if doc.data is not None:
            errors.append(doc.error((), "a rule file must be a mapping with the keys 'version' and "
                                        f"'rules'; got {doc.data!r:.60}"))
        raise RuleError(sorted(errors, key=_in_file_order))
    data = {k: v for k, v in doc.data.items() if k != "extends"}
    try:
        ruleset = RuleSet.model_validate(data)
    except ValidationError as error:
        errors.extend(located_errors(doc, error.errors()))
        raise RuleError(sorted(errors, key=_in_file_order)) from None
    if errors:
        raise RuleError(sorted(errors, key=_in_file_order))
    ruleset._source = source
    ruleset._rule_locations = [doc.where(("rules", i)) for i in range(len(ruleset.rules))]
    return ruleset


def _in_file_order(error: LocatedError) -> tuple[str, int, int]:
    loc = error.location
    return (loc.file, loc.line or 0, loc.column or 0)
