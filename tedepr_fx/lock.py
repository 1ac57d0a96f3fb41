"""Lock files: what a policy does to a model, as a text file to commit and check in CI.

A lock file is written by ``tedepr-fx plan MODEL --rules R --lock`` (or
:meth:`tedepr_fx.Plan.write_lock`). It holds a header, one line per weight-bearing
layer in the model's layer order and a totals line::

    # tedepr-fx lock 1
    # tool: tedepr_fx 0.1.0
    # torch: 2.13.0+cpu
    # rules-sha256: 3f2a...
    # model: tedepr_fx.models.lenet.LeNet5
    # inputs: float32[2,1,28,28]
    layer=conv1 rule=small-layers action=prune format=dense modes=- ranks=- dense=150 stored=150 kept=2 kept_source=predicted flops_before=470400 flops_after=470400
    ...
    total layers=5 unmatched=0 dense=61470 stored=5524 kept=615 density=0.010005 flops_before=1666080 flops_after=1671552

Every line has its fields in a fixed order and depends on nothing but its own
layer (no column alignment, no timestamps, no machine paths, floats at six
decimals), so that changing one rule moves only the lines of the layers it decides,
the rules hash and the totals line.

:func:`check_lock` compares the layer lines, the totals line and the header's
``rules-sha256``, ``model`` and ``inputs``; a different tool or torch version is
only a note (:func:`version_notes`), so that a lock written on one torch patch
version still checks on another.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tedepr_fx.record import LayerRecord
    from tedepr_fx.reporting import Plan

LOCK_VERSION = "1"
MAGIC = f"# tedepr-fx lock {LOCK_VERSION}"
HEADER_KEYS = ("tool", "torch", "rules-sha256", "model", "inputs")
CHECKED_HEADER_KEYS = ("rules-sha256", "model", "inputs")  # tool / torch differences are notes
LAYER_FIELDS = ("layer", "rule", "action", "format", "modes", "ranks", "dense", "stored", "kept",
                "kept_source", "flops_before", "flops_after")
TOTAL_FIELDS = ("layers", "unmatched", "dense", "stored", "kept", "density", "flops_before", "flops_after")

_PLAIN = re.compile(r"[A-Za-z0-9_.,:/@+*\[\]<>=-]+")
_FIELD = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|\S+)')


class LockError(ValueError):
    """A lock file is missing or garbled; the message names the file (and line)."""


@dataclass
class Lock:
    """A parsed lock file: header fields, layer lines, totals line (text without the newline)."""

    header: dict[str, str]
    layers: list[str]
    totals: str
    path: str = ""
    fields: list[dict[str, str]] = field(default_factory=list)  # each layer line's fields

    def checked_lines(self) -> list[str]:
        """The lines :func:`check_lock` compares: checked header fields, layers, totals."""
        return ([f"# {key}: {self.header.get(key, '')}" for key in CHECKED_HEADER_KEYS]
                + self.layers + [self.totals])


# -- writing ------------------------------------------------------------------------------------

def rules_sha256(rules: Any) -> str:
    """sha256 of a canonical JSON dump of the resolved rules (a :class:`RuleSet`)."""
    from tedepr_fx.rules import load_rules

    ruleset = load_rules(rules)
    text = json.dumps(ruleset.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def inputs_text(example: Any) -> str:
    """The example inputs as dtype and shape, e.g. ``float32[2,1,28,28]``; ``-`` when none."""
    if example is None:
        return "-"
    args, kwargs = example if _is_split(example) else ((example,), {})
    parts = [_value_text(a) for a in args]
    parts += [f"{k}={_value_text(kwargs[k])}" for k in sorted(kwargs)]
    return " ".join(parts) if parts else "-"


def _is_split(example: Any) -> bool:
    return (isinstance(example, tuple) and len(example) == 2 and isinstance(example[0], tuple)
            and isinstance(example[1], Mapping))


def _value_text(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{str(dtype).removeprefix('torch.')}[{','.join(str(int(d)) for d in shape)}]"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_value_text(v) for v in value) + ")"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    return type(value).__name__


def identity(model: Any, rules: Any, example: Any, order: Sequence[str]) -> dict[str, Any]:
    """What a lock's header says about the model, rules and inputs; ``order`` is the layers' order."""
    cls = type(model)
    return {"model": f"{cls.__module__}.{cls.__qualname__}", "inputs": inputs_text(example),
            "rules-sha256": rules_sha256(rules), "order": list(order)}


def versions() -> dict[str, str]:
    """The tool and torch versions, as the lock header and the JSON document print them."""
    import tedepr_fx

    try:
        import torch

        torch_version = str(torch.__version__)
    except ImportError:  # pragma: no cover
        torch_version = "-"
    return {"tool": f"tedepr_fx {tedepr_fx.__version__}", "torch": torch_version}


def _quote(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        text = f"{value:.6f}"
    else:
        text = str(value)
    return text if _PLAIN.fullmatch(text) and text != "-" else json.dumps(text, ensure_ascii=True)


def layer_line(record: LayerRecord) -> str:
    """One layer's lock line: the fields of :data:`LAYER_FIELDS`, in that order."""
    values = {
        "layer": record.name, "rule": record.rule, "action": record.action, "format": record.format,
        "modes": record.modes_text, "ranks": record.ranks_text, "dense": record.dense,
        "stored": record.stored, "kept": record.kept, "kept_source": record.kept_source,
        "flops_before": record.flops_before, "flops_after": record.flops_after,
    }
    return " ".join(f"{key}={_quote(values[key])}" for key in LAYER_FIELDS)


def _ordered(plan: Plan) -> list[LayerRecord]:
    records = list(plan.rows) + list(plan.unmatched)
    order = {name: i for i, name in enumerate(plan.identity.get("order", []))}
    position = {id(r): i for i, r in enumerate(records)}
    return sorted(records, key=lambda r: (order.get(r.name, len(order)), position[id(r)]))


def totals_line(plan: Plan) -> str:
    t = plan.totals
    values = {"layers": t["layers"], "unmatched": t["unmatched_layers"], "dense": t["dense"],
              "stored": t["stored"], "kept": t["kept"], "density": t["density_vs_dense"],
              "flops_before": t.get("flops_before"), "flops_after": t.get("flops_after")}
    return "total " + " ".join(f"{key}={_quote(values[key])}" for key in TOTAL_FIELDS)


def lock_text(plan: Plan) -> str:
    """The lock file of ``plan``: header, one line per layer in model order, totals."""
    header = {**versions(), **{k: str(v) for k, v in plan.identity.items() if k != "order"}}
    lines = [MAGIC]
    lines += [f"# {key}: {header.get(key, '-')}" for key in HEADER_KEYS]
    lines += [layer_line(r) for r in _ordered(plan)]
    lines.append(totals_line(plan))
    return "\n".join(lines) + "\n"


def write_lock(plan: Plan, path: str | Path) -> Path:
    """Write ``plan``'s lock file (LF line endings, UTF-8) and return its path."""
    path = Path(path)
    path.write_bytes(lock_text(plan).encode("utf-8"))
    return path


def lock_path(rules_path: str | Path) -> Path:
    """Where ``--lock`` puts the lock of a rule file: next to it, suffix replaced, ``rules/lenet.lock``."""
    return Path(rules_path).with_suffix(".lock")


# -- reading ------------------------------------------------------------------------------------

def parse_lock(text: str, path: str = "<lock>") -> Lock:
    """Parse a lock file's text; :class:`LockError` names ``path`` and the line of a problem."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != MAGIC:
        first = lines[0] if lines else ""
        raise LockError(f"{path}:1: not a tedepr-fx lock file (expected {MAGIC!r}, got {first[:60]!r})")
    header: dict[str, str] = {}
    layers: list[str] = []
    fields: list[dict[str, str]] = []
    totals = ""
    for number, line in enumerate(lines[1:], start=2):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        if totals:
            raise LockError(f"{where}: text after the totals line")
        if line.startswith("# "):
            key, sep, value = line[2:].partition(": ")
            if not sep or key not in HEADER_KEYS:
                raise LockError(f"{where}: unknown header line {line[:60]!r}")
            if layers:
                raise LockError(f"{where}: header line after the layer lines")
            header[key] = value
        elif line.startswith("layer="):
            fields.append(_fields(line, LAYER_FIELDS, where))
            layers.append(line)
        elif line.startswith("total "):
            _fields(line[len("total "):], TOTAL_FIELDS, where)
            totals = line
        else:
            raise LockError(f"{where}: expected a header, layer= or total line; got {line[:60]!r}")
    if not totals:
        raise LockError(f"{path}:{len(lines)}: no totals line (the file is truncated?)")
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise LockError(f"{path}: header lacks {', '.join(missing)}")
    return Lock(header, layers, totals, path, fields)


def _fields(line: str, names: Sequence[str], where: str) -> dict[str, str]:
    found = [(m.group(1), m.group(2)) for m in _FIELD.finditer(line)]
    keys = [k for k, _ in found]
    if tuple(keys) != tuple(names) or " ".join(f"{k}={v}" for k, v in found) != line:
        raise LockError(f"{where}: expected the fields {' '.join(names)}; got {line[:80]!r}")
    return {k: json.loads(v) if v.startswith('"') else v for k, v in found}


def load_lock(path: str | Path) -> Lock:
    """Read and parse a lock file; :class:`LockError` when it is missing or garbled."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise LockError(f"{path}: no such lock file (write it with `tedepr-fx plan ... --lock`)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LockError(f"{path}: cannot read the lock file: {error}") from None
    return parse_lock(text, str(path))


def _as_lock(value: Plan | Lock | str | Path) -> Lock:
    if isinstance(value, Lock):
        return value
    if isinstance(value, (str, Path)):
        return load_lock(value)
    return parse_lock(lock_text(value), "<plan>")


# -- comparing ----------------------------------------------------------------------------------

def check_lock(plan: Plan | Lock, path: str | Path | Lock) -> list[str]:
    """A short unified diff from the lock at ``path`` to what ``plan`` says; empty when they match.

    Compared: the layer lines, the totals line and the header's rules hash, model and
    inputs. Tool and torch versions are not (see :func:`version_notes`).
    """
    old = _as_lock(path)
    new = _as_lock(plan)
    if old.checked_lines() == new.checked_lines():
        return []
    return [line.rstrip("\n") for line in difflib.unified_diff(
        old.checked_lines(), new.checked_lines(), fromfile=old.path or "lock",
        tofile="what the rules do now", n=0, lineterm="")]


def version_notes(plan: Plan | Lock, path: str | Path | Lock) -> list[str]:
    """Notes on tool / torch versions that differ between the lock and ``plan`` (never a failure)."""
    old, new = _as_lock(path), _as_lock(plan)
    return [f"note: {key} differs: lock has {old.header.get(key)!r}, now {new.header.get(key)!r}"
            for key in ("tool", "torch") if old.header.get(key) != new.header.get(key)]


def diff(a: Plan | Lock | str | Path, b: Plan | Lock | str | Path) -> str:
    """The layers that changed from ``a`` to ``b`` and how, one line each; plans, locks or lock paths.

    >>> print(diff_fields({"layer": "fc1", "ranks": "[1,6,6,1]", "stored": "1920"},
    ...                   {"layer": "fc1", "ranks": "[1,4,4,1]", "stored": "880"}))
    fc1: ranks [1,6,6,1] -> [1,4,4,1], stored 1920 -> 880
    """
    old, new = _as_lock(a), _as_lock(b)
    before = {f["layer"]: f for f in old.fields}
    after = {f["layer"]: f for f in new.fields}
    names = [f["layer"] for f in new.fields] + [n for n in before if n not in after]
    lines = []
    for name in names:
        if name not in before:
            lines.append(f"{name}: added ({_summary(after[name])})")
        elif name not in after:
            lines.append(f"{name}: removed (was {_summary(before[name])})")
        elif before[name] != after[name]:
            lines.append(diff_fields(before[name], after[name]))
    for key in ("model", "inputs", "rules-sha256"):
        was, now = old.header.get(key, "-"), new.header.get(key, "-")
        if was != now:
            short = key == "rules-sha256"
            lines.append(f"{key}: {was[:12] if short else was} -> {now[:12] if short else now}")
    if old.totals != new.totals:
        was_t, now_t = _total_fields(old), _total_fields(new)
        lines.append("totals: " + ", ".join(f"{k} {was_t.get(k)} -> {now_t.get(k)}" for k in TOTAL_FIELDS
                                            if was_t.get(k) != now_t.get(k)))
    return "\n".join(lines) + "\n" if lines else "no layer changed\n"


def _total_fields(lock: Lock) -> dict[str, str]:
    return _fields(lock.totals.removeprefix("total "), TOTAL_FIELDS, lock.path)


def diff_fields(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """``layer: field old -> new, ...`` for the fields that differ."""
    changes = [f"{k} {before.get(k, '-')} -> {after.get(k, '-')}" for k in LAYER_FIELDS
               if k != "layer" and before.get(k, "-") != after.get(k, "-")]
    return f"{after.get('layer', before.get('layer'))}: " + ", ".join(changes)


def _summary(f: Mapping[str, str]) -> str:
    return (f"rule {f['rule']}, {f['action']}, format {f['format']}, ranks {f['ranks']}, "
            f"stored {f['stored']}, kept {f['kept']}")
