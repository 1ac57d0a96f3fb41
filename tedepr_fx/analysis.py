"""Analyses over a captured graph, on a networkx DiGraph view of the fx graph.

The view has one vertex per fx node (attributes ``op``, ``target`` and the
``tedepr`` record the match pass left in ``node.meta``) and one edge per data
dependency. Reports and drawings of a rewrite are made from the same view.

Example
-------
>>> import torch.fx as fx
>>> from torch import nn
>>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
>>> layer_flow(gm)
{'0': [], '2': ['0']}
"""

from __future__ import annotations

import networkx as nx
import torch.fx as fx
from torch import nn

from tedepr_fx.handlers import kind_of


def graph_view(gm: fx.GraphModule) -> nx.DiGraph:
    """A DiGraph with one vertex per fx node (by name) and an edge from each input to its user."""
    view = nx.DiGraph()
    for node in gm.graph.nodes:
        view.add_node(node.name, op=node.op, target=str(node.target),
                      tedepr=node.meta.get("tedepr"))
        for source in node.all_input_nodes:
            view.add_edge(source.name, node.name)
    return view


def _is_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    module = gm.get_submodule(node.target)
    return kind_of(module) is not None or hasattr(module, "tedepr_info") or isinstance(
        module, nn.MultiheadAttention)


def layer_flow(gm: fx.GraphModule) -> dict[str, list[str]]:
    """For every layer node, the layer nodes whose outputs reach it without passing another layer."""
    view = graph_view(gm)
    layers = {n.name: n.target for n in gm.graph.nodes if _is_layer(gm, n)}
    flow: dict[str, list[str]] = {}
    for name, target in layers.items():
        feeders, stack, seen = set(), list(view.predecessors(name)), set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in layers:
                feeders.add(layers[current])
            else:
                stack.extend(view.predecessors(current))
        flow[target] = sorted(feeders)
    return flow


def shared_parameters(gm: fx.GraphModule) -> dict[str, list[str]]:
    """Parameters read (``get_attr``) by more than one functional call: weights tied in code."""
    view = graph_view(gm)
    shared = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            users = sorted(view.successors(node.name))
            if len(users) > 1:
                shared[node.target] = users
    return shared
