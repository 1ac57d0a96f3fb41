"""The rewritten graph as a reviewer reads it: annotated code, a unified diff, Graphviz DOT.

A swapped layer keeps its name, so the fx code of a rewritten graph reads the same
before and after (``dense = self.dense(hidden_states)``). :class:`GraphView` is the
graph's structure taken once from a captured model (plain data: no module, no tensor):
per region, its code lines with the node each line defines, and the edges between
nodes. It renders

- :meth:`GraphView.code`: each graph region's code, every layer call followed on the
  same line by what the rewrite made of it, e.g.
  ``fc1 = self.fc1(flatten)  # TTLinear tt [1,6,6,1] kept 223/48,000 rule=fc1-tt``;
  eager regions (code that does not trace) list the layers swapped in them;
- :meth:`GraphView.dot`: the same graph in Graphviz DOT, rewritten nodes coloured by
  format and labelled with ranks and density.

Everything is a pure function of the model's structure and the layer records: node
names come from fx (stable across runs and machines), numbers are printed in full
(with thousands separators) and densities at two decimals, so that two runs give
byte-identical text.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.fx as fx
    from torch import nn

    from tedepr_fx.capture import Captured
    from tedepr_fx.record import LayerRecord

# ";  x = y = None": fx frees values early; a reviewer does not need to read that
_FREES = re.compile(r";  (?:[A-Za-z_]\w* = )+None$")
_DEFINES = re.compile(r"^    ([A-Za-z_]\w*) = ")

# fill colour of a rewritten node, by format (ColorBrewer Set3, readable in print)
FORMAT_COLOURS = {"tt": "#8dd3c7", "tucker": "#fdb462", "tr": "#bebada", "dense": "#fb8072"}
KEEP_COLOUR = "#ffffff"


@dataclass(frozen=True)
class Line:
    """One line of a region's code; ``node`` is the fx node it defines (empty otherwise)."""

    text: str
    node: str = ""
    module: str = ""  # for a call_module node: the called module's path in the model


@dataclass(frozen=True)
class RegionView:
    """One region of the model: its code (graph) or the reason it stayed eager (swap)."""

    name: str  # module path, "" for the root
    mode: str  # "graph" | "swap"
    reason: str = ""
    lines: tuple[Line, ...] = ()
    nodes: tuple[tuple[str, str, str], ...] = ()  # (node name, op, what it calls)
    edges: tuple[tuple[str, str], ...] = ()  # (from node, to node)

    @property
    def title(self) -> str:
        return self.name or "<root>"


@dataclass(frozen=True)
class GraphView:
    """The structure of a captured (or transformed) model: its regions in capture order."""

    regions: tuple[RegionView, ...] = field(default_factory=tuple)
    model: str = ""  # the model's class name, for titles

    @classmethod
    def of(cls, root: nn.Module, regions: Sequence[Mapping[str, str]], model: str = "") -> GraphView:
        """Read the structure of ``root``, whose regions ``regions`` lists (``Captured.region_dicts``)."""
        import torch.fx as fx

        views = []
        for region in regions:
            name = "" if region["name"] == "<root>" else region["name"]
            module = root.get_submodule(name) if name else root
            if region["mode"] == "graph" and isinstance(module, fx.GraphModule):
                views.append(_graph_region(name, module))
            else:
                views.append(RegionView(name, "swap", region.get("reason", "")))
        return cls(tuple(views), model)

    @classmethod
    def of_captured(cls, captured: Captured, model: str = "") -> GraphView:
        return cls.of(captured.module, captured.region_dicts(), model)

    # -- code ---------------------------------------------------------------------------------

    def code(self, records: Iterable[LayerRecord], *, before: bool = False) -> str:
        """The annotated code: each layer call with what the rewrite made of it (``before``:
        with its dense type and size only, as the model was)."""
        records = list(records)
        by_call = _by_call(records)
        by_path = {r.path or r.name: [r] for r in records}
        placed: set[str] = set()
        out = ["# tedepr_fx annotated graph"
               + (f": {self.model}" if self.model else "")]
        swaps = _swaps_by_region(self, records)
        for region in self.regions:
            out.append("")
            if region.mode == "graph":
                out.append(f"# region {region.title}: graph")
                for line in region.lines:
                    on_line = by_call.get((region.name, line.node)) or by_path.get(line.module, [])
                    text = line.text
                    if on_line:
                        placed.update(r.name for r in on_line)
                        text += "  # " + " | ".join(_note(r, before) for r in on_line)
                    out.append(text)
                    if line.module:  # a leaf that stayed eager inside the graph: what was swapped in it
                        inner = [r for r in records if r.name.startswith(line.module + ".")
                                 and r.name not in placed]
                        for r in inner:
                            placed.add(r.name)
                            out.append(f"    #   {r.name[len(line.module) + 1:]}: {_note(r, before)}")
            else:
                reason = f" ({region.reason})" if region.reason else ""
                out.append(f"# region {region.title}: eager{reason}")
                for r in swaps.get(region.name, []):
                    if r.name in placed:
                        continue
                    placed.add(r.name)
                    local = r.name[len(region.name) + 1:] if region.name else r.name
                    out.append(f"#   {local}: {_note(r, before)}")
        return "\n".join(out) + "\n"

    def diff(self, records: Iterable[LayerRecord], before: GraphView | None = None, *,
             context: int = 1) -> str:
        """Unified diff of the annotated code before (``before``'s graph, or this one) and after."""
        records = list(records)
        old = (before or self).code(records, before=True).splitlines()
        new = self.code(records).splitlines()
        lines = difflib.unified_diff(old, new, "before", "after", n=context, lineterm="")
        return "".join(line + "\n" for line in lines)

    # -- picture ------------------------------------------------------------------------------

    def dot(self, records: Iterable[LayerRecord], title: str = "") -> str:
        """Graphviz DOT of the rewritten graph: one cluster per region, rewritten layers
        filled by format (:data:`FORMAT_COLOURS`) and labelled with ranks and density."""
        records = list(records)
        by_call = _by_call(records)
        swaps = _swaps_by_region(self, records)
        out = ["digraph tedepr_fx {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica", fontsize=10];']
        if title or self.model:
            out.append(f"  label={_q(title or self.model)};")
        for i, region in enumerate(self.regions):
            out.append(f"  subgraph cluster_{i} {{")
            out.append(f"    label={_q(f'{region.title} ({region.mode})')};")
            if region.mode == "graph":
                for name, op, target in region.nodes:
                    on_node = by_call.get((region.name, name), [])
                    out.append(f"    {_q(f'{i}:{name}')} [{_node_attrs(name, op, target, on_node)}];")
                for a, b in region.edges:
                    out.append(f"    {_q(f'{i}:{a}')} -> {_q(f'{i}:{b}')};")
            else:
                for r in swaps.get(region.name, []):
                    out.append(f"    {_q(f'{i}:{r.name}')} [{_node_attrs(r.name, 'swap', r.old_type, [r])}];")
            out.append("  }")
        out.append("}")
        return "\n".join(out) + "\n"


# -- rendering helpers ---------------------------------------------------------------------------


def render_dot(dot_text: str, path: str | Path) -> Path:
    """Write ``dot_text`` to ``path``: as is for ``.dot`` / ``.gv``, rendered by Graphviz's
    ``dot`` for ``.svg`` / ``.png`` / ``.pdf``. Raises ``ValueError`` naming the missing
    binary or the unknown suffix."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("dot", "gv"):
        path.write_text(dot_text)
        return path
    if suffix not in ("svg", "png", "pdf"):
        raise ValueError(f"{path}: unknown picture format {path.suffix!r}; use .dot, .gv, .svg, .png or .pdf")
    binary = shutil.which("dot")
    if binary is None:
        raise ValueError(f"rendering {path.name} needs Graphviz's 'dot' program, which is not installed "
                         "(e.g. apt-get install graphviz); write a .dot file instead and render it elsewhere")
    done = subprocess.run([binary, f"-T{suffix}", "-o", str(path)], input=dot_text.encode(),
                          capture_output=True, check=False, timeout=300)
    if done.returncode != 0:
        raise ValueError(f"dot failed on {path.name}: {done.stderr.decode(errors='replace').strip()[:300]}")
    return path


def _graph_region(name: str, gm: fx.GraphModule) -> RegionView:
    import torch.fx as fx

    nodes = {n.name: n for n in gm.graph.nodes}
    lines = []
    for raw in gm.graph.python_code("self").src.splitlines():
        if not raw.strip():
            continue
        text = _FREES.sub("", raw.rstrip())
        defined = _DEFINES.match(text)
        node = nodes.get(defined.group(1)) if defined else None
        if node is None:
            lines.append(Line(text))
            continue
        module = _join(name, str(node.target)) if node.op == "call_module" else ""
        lines.append(Line(text, node.name, module))
    graph_nodes = tuple((n.name, n.op, _target_text(n)) for n in gm.graph.nodes)
    edges = tuple((i.name, n.name) for n in gm.graph.nodes for i in n.all_input_nodes
                  if isinstance(i, fx.Node))
    return RegionView(name, "graph", "", tuple(lines), graph_nodes, edges)


def _target_text(node: fx.Node) -> str:
    target = node.target
    if callable(target):
        return getattr(target, "__name__", type(target).__name__)
    return str(target)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _by_call(records: Sequence[LayerRecord]) -> dict[tuple[str, str], list[LayerRecord]]:
    """The records of layers called in graph code, by (region, node name)."""
    out: dict[tuple[str, str], list[LayerRecord]] = {}
    for r in records:
        if r.how == "graph" and r.node:
            out.setdefault((r.region, r.node), []).append(r)
    return out


def _swaps_by_region(view: GraphView, records: Sequence[LayerRecord]) -> dict[str, list[LayerRecord]]:
    """Layers swapped in eager code, under the innermost eager region that holds them."""
    eager = sorted((r.name for r in view.regions if r.mode == "swap"), key=len, reverse=True)
    graph_names = [r.name for r in view.regions if r.mode == "graph"]
    out: dict[str, list[LayerRecord]] = {}
    for record in records:
        if record.how == "graph":
            continue
        if any(_inside(record.name, g) for g in graph_names if g):  # a leaf inside a graph region
            continue
        owner = next((e for e in eager if _inside(record.name, e)), "")
        out.setdefault(owner, []).append(record)
    return out


def _inside(name: str, region: str) -> bool:
    return not region or name.startswith(region + ".")


def _n(value: int) -> str:
    return f"{value:,}"


def _note(record: LayerRecord, before: bool) -> str:
    """What the rewrite made of one layer, in one line (``before``: what it was)."""
    if before or record.action == "unmatched":
        unsupported = " (unsupported layer kind)" if record.note.startswith("unsupported layer kind") else ""
        return f"{record.old_type} dense {_n(record.dense)}{unsupported}"
    if record.action == "keep":
        return f"{record.old_type} dense {_n(record.dense)} kept whole rule={record.rule}"
    approx = "~" if record.kept_source == "predicted" else ""
    shape = f"{record.format} {record.ranks_text}" if record.ranks_text else str(record.format)
    return (f"{record.new_type} {shape} kept {approx}{_n(record.kept)}/{_n(record.dense)} "
            f"rule={record.rule}")


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node_attrs(name: str, op: str, target: str, records: Sequence[LayerRecord]) -> str:
    rewritten = [r for r in records if r.action != "unmatched"]
    if not rewritten:
        label = name if op in ("placeholder", "output") else f"{name}\n{target}"
        shape = "ellipse" if op in ("placeholder", "output") else "box"
        return f"label={_q(label)}, shape={shape}"
    label = "\n".join(_node_label(r) for r in rewritten)
    first = rewritten[0]
    colour = KEEP_COLOUR if first.action == "keep" else FORMAT_COLOURS.get(str(first.format), "#d9d9d9")
    return f"label={_q(label)}, style=filled, fillcolor={_q(colour)}"


def _node_label(record: LayerRecord) -> str:
    if record.action == "keep":
        return f"{record.name}\n{record.old_type}\nkept whole ({record.rule})"
    density = record.kept / record.dense if record.dense else 0.0
    ranks = f" {record.ranks_text}" if record.ranks_text else ""
    approx = "~" if record.kept_source == "predicted" else ""
    return (f"{record.name}\n{record.new_type} {record.format}{ranks}\n"
            f"kept {approx}{_n(record.kept)}/{_n(record.dense)} ({100 * density:.2f}%)")
