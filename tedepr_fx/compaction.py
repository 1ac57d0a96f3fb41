"""Rank compaction: remove the rank slices that masking left dead; the outputs stay the same.

A TT-matrix weight is a sum over bond indices of products of core slices (Novikov et al.,
"Tensorizing Neural Networks", NeurIPS 2015): index ``j`` of the bond between ``core_k``
and ``core_{k+1}`` enters every term through ``core_k[..., j]`` and ``core_{k+1}[j, ...]``.
If either slice is entirely pruned, every term through ``j`` is zero and ``j`` can go. The
same holds for a tensor ring's closing bond (traced), for the bonds of a TT convolution's
spatial core, and for a Tucker-2 rank index, whose factor column ``U[:, j]`` and core slice
meet in every term (Kim et al., ICLR 2016). Removing an index also removes the entries of
the neighbouring cores that led to it, which can empty a slice of the next bond: compaction
repeats until nothing changes, so what remains is the largest set of indices whose every
slice keeps an entry among the indices that remain (an index that cannot reach the output
goes too). A bond never drops below rank 1; a layer whose every path is pruned keeps rank 1
with everything pruned, and outputs its bias as before.

:func:`compact` rebuilds each such layer with the smaller ranks (same class, modes and
geometry) from the kept slices and their masks. Products over fewer, zero-free terms give
the same outputs up to the float rounding of the summation order.

Example
-------
>>> import torch
>>> from tedepr_fx.layers.tt import TTLinear
>>> layer = TTLinear(6, 4, [2, 3], [2, 2], [1, 3, 1])
>>> mask = torch.ones(1, 2, 2, 3, dtype=torch.bool)
>>> mask[..., 1] = False  # bond index 1 leaves core_0 entirely pruned
>>> layer.set_mask("core_0", mask)
>>> small, records = compact(layer)
>>> records[0].ranks_before, records[0].ranks_after
([1, 3, 1], [1, 2, 1])
>>> x = torch.randn(5, 6)
>>> bool(torch.allclose(small(x), layer(x), atol=1e-6))
True
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from tedepr_fx.deploy import replace_module
from tedepr_fx.errors import LayerError
from tedepr_fx.layers.embedding import TTMatrixEmbedding
from tedepr_fx.layers.masked import MaskedMixin, Pair
from tedepr_fx.layers.tt import TTMatrixConv2d, TTMatrixLinear
from tedepr_fx.layers.tt_lstm import TTLSTM, TTMapSpec
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear
from tedepr_fx.record import COST_WORDS, RECORD_ATTR, LayerRecord, Rewrite

__all__ = ["CompactionRecord", "compact"]

NOTE = "ranks before compaction"  # how a compacted layer's record note starts


@dataclass
class CompactionRecord:
    """What :func:`compact` did to one layer (qualified ``name``; ``"(root)"`` for the model itself).

    ``ranks_before`` / ``ranks_after`` are the layer's ``ranks`` (a TT-LSTM's: its first
    map's, as its layer record shows; ``maps_before`` / ``maps_after`` hold every map's).
    ``dead``: every path through the layer's chain (a TT-LSTM: through the maps in
    ``dead_maps``) was pruned; the chain keeps rank 1 with everything pruned, and contributes
    nothing, as before (a linear layer outputs its bias).
    """

    name: str
    layer_type: str
    ranks_before: list[int]
    ranks_after: list[int]
    dead: bool = False
    maps_before: dict[str, list[int]] = field(default_factory=dict)
    maps_after: dict[str, list[int]] = field(default_factory=dict)
    dead_maps: list[str] = field(default_factory=list)

    @property
    def compacted(self) -> bool:
        return self.ranks_after != self.ranks_before or self.maps_after != self.maps_before

    @property
    def note(self) -> str:
        if self.maps_before:
            ranks = ", ".join(f"{m} {_ints(r)}" for m, r in self.maps_before.items())
        else:
            ranks = _ints(self.ranks_before)
        dead = f"dead maps {', '.join(self.dead_maps)}" if self.dead_maps else "dead"
        return f"{NOTE} {ranks}" + (f"; {dead}: every path pruned, kept at rank 1" if self.dead else "")


def _ints(values: list[int]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


@dataclass(frozen=True)
class _Bond:
    """One rank index set: the entries of the layer's ranks that give its size (two for a ring's
    closing bond) and the ``(tensor, axis of its view)`` pairs it indexes."""

    positions: tuple[int, ...]
    sides: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class _Layout:
    """How a layer's tensors meet: the shape each is read as (its view), the layer's ranks (a
    TT-LSTM's maps' one after another) and its chains of bonds by name (``""`` for a
    layer of one chain, a TT-LSTM's map names), each chain's ranks at ``spans[chain]``."""

    views: dict[str, tuple[int, ...]]
    ranks: list[int]
    chains: dict[str, tuple[_Bond, ...]]
    spans: dict[str, slice]


def _tt_bonds(names: list[str], first: int) -> tuple[_Bond, ...]:
    """Bonds of TT-matrix cores ``names`` ``(r, m, n, r')`` whose ranks start at ``first``: the
    closing bond (rank 1 in a train, traced in a ring), then those between neighbours."""
    ring = _Bond((first, first + len(names)), ((names[0], 0), (names[-1], 3)))
    return (ring, *(_Bond((first + k,), ((names[k - 1], 3), (names[k], 0))) for k in range(1, len(names))))


def _lstm_maps(layer: TTLSTM) -> list[str]:
    """The TT maps of a TT-LSTM in the order of its ``maps``."""
    names = [f"ih_l{k}" for k in range(layer.num_layers)]
    return names + ([f"hh_l{k}" for k in range(layer.num_layers)] if layer.hidden_to_hidden else [])


def _layout(layer: nn.Module) -> _Layout:
    """The layout of a layer :func:`compact` knows (see :data:`_BUILDERS`)."""
    names = list(cast(MaskedMixin, layer).prunable)
    views = {n: tuple(cast(torch.Tensor, getattr(layer, n)).shape) for n in names}
    if isinstance(layer, TTLSTM):
        ranks: list[int] = []
        chains: dict[str, tuple[_Bond, ...]] = {}
        spans: dict[str, slice] = {}
        for prefix, spec in zip(_lstm_maps(layer), layer.maps):
            cores = [f"{prefix}_core_{k}" for k in range(len(spec["in_modes"]))]
            chains[prefix] = _tt_bonds(cores, len(ranks))
            spans[prefix] = slice(len(ranks), len(ranks) + len(spec["ranks"]))
            ranks += spec["ranks"]
        return _Layout(views, ranks, chains, spans)
    ranks = list(cast("list[int]", layer.ranks))
    whole = {"": slice(0, len(ranks))}
    if isinstance(layer, TTMatrixConv2d):
        # the spatial core (R r_0, 1, kh, kw) holds its filters (a, b), a outer
        views[names[0]] = (ranks[0], ranks[1], layer.kernel_size[0] * layer.kernel_size[1])
        channel = _tt_bonds(names[1:], 1)  # its closing bond is the spatial core's a, not position 1
        bonds = (_Bond((0, len(ranks) - 1), ((names[0], 0), (names[-1], 3))),
                 _Bond((1,), ((names[0], 1), (names[1], 0))), *channel[1:])
        return _Layout(views, ranks, {"": bonds}, whole)
    if isinstance(layer, (TTMatrixLinear, TTMatrixEmbedding)):
        return _Layout(views, ranks, {"": _tt_bonds(names, 0)}, whole)
    # Tucker-2: factor_out (out, r_out), core (r_out, r_in, *k), factor_in (in, r_in)
    return _Layout(views, ranks, {"": (_Bond((0,), (("factor_out", 1), ("core", 0))),
                                       _Bond((1,), (("factor_in", 1), ("core", 1))))}, whole)


def _first(layer: nn.Module) -> torch.Tensor:
    """The layer's first factor, whose device and dtype the rebuilt layer takes."""
    return cast(torch.Tensor, getattr(layer, cast(MaskedMixin, layer).prunable[0]))


def _build_tt_linear(layer: nn.Module, ranks: list[int]) -> nn.Module:
    old = cast(TTMatrixLinear, layer)
    return type(old)(old.in_features, old.out_features, old.in_modes, old.out_modes, ranks,
                     bias=old.bias is not None, weight_layout=old.weight_layout, in_pad=old.in_pad,
                     out_pad=old.out_pad, device=_first(old).device, dtype=_first(old).dtype)


def _build_tt_conv(layer: nn.Module, ranks: list[int]) -> nn.Module:
    old = cast(TTMatrixConv2d, layer)
    # torch types a Conv2d's geometry as tuple[int, ...]; a 2-d convolution's has two entries
    return type(old)(old.in_channels, old.out_channels, cast(Pair, old.kernel_size), old.in_modes,
                     old.out_modes, ranks, stride=cast(Pair, old.stride),
                     padding=cast("Pair | str", old.padding), dilation=cast(Pair, old.dilation),
                     bias=old.bias is not None,
                     padding_mode=old.padding_mode, in_pad=old.in_pad, out_pad=old.out_pad,
                     device=_first(old).device, dtype=_first(old).dtype)


def _build_tt_embedding(layer: nn.Module, ranks: list[int]) -> nn.Module:
    old = cast(TTMatrixEmbedding, layer)
    return type(old)(old.num_embeddings, old.embedding_dim, old.in_modes, old.out_modes, ranks,
                     padding_idx=old.padding_idx, in_pad=old.in_pad, out_pad=old.out_pad,
                     device=_first(old).device, dtype=_first(old).dtype)


def _build_tucker_linear(layer: nn.Module, ranks: list[int]) -> nn.Module:
    old = cast(TuckerLinear, layer)
    return type(old)(old.in_features, old.out_features, ranks, bias=old.bias is not None,
                     weight_layout=old.weight_layout, device=old.core.device, dtype=old.core.dtype)


def _build_tucker_conv(layer: nn.Module, ranks: list[int]) -> nn.Module:
    old = cast(Tucker2Conv2d, layer)
    return type(old)(old.in_channels, old.out_channels, cast(Pair, old.kernel_size), ranks,
                     stride=cast(Pair, old.stride), padding=cast("Pair | str", old.padding),
                     dilation=cast(Pair, old.dilation), bias=old.bias is not None,
                     padding_mode=old.padding_mode, device=old.core.device, dtype=old.core.dtype)


def _build_tt_lstm(layer: nn.Module, ranks: list[int]) -> nn.Module:
    old = cast(TTLSTM, layer)
    maps, start = [], 0
    for spec in old.maps:
        end = start + len(spec["ranks"])
        maps.append(TTMapSpec(in_modes=spec["in_modes"], out_modes=spec["out_modes"], ranks=ranks[start:end],
                              in_pad=spec["in_pad"], out_pad=spec["out_pad"]))
        start = end
    return type(old)(old.input_size, old.hidden_size, maps, num_layers=old.num_layers, bias=old.bias,
                     batch_first=old.batch_first, dropout=old.dropout, hidden_to_hidden=old.hidden_to_hidden,
                     device=_first(old).device, dtype=_first(old).dtype)


# the layers compact rebuilds (subclasses too: TT and TR), each built empty with new ranks
_BUILDERS: tuple[tuple[type[nn.Module], Callable[[nn.Module, list[int]], nn.Module]], ...] = (
    (TTLSTM, _build_tt_lstm),
    (TTMatrixConv2d, _build_tt_conv),
    (TTMatrixLinear, _build_tt_linear),
    (TTMatrixEmbedding, _build_tt_embedding),
    (TuckerLinear, _build_tucker_linear),
    (Tucker2Conv2d, _build_tucker_conv),
)


def _builder(layer: nn.Module) -> Callable[[nn.Module, list[int]], nn.Module] | None:
    for kind, build in _BUILDERS:
        if isinstance(layer, kind):
            return build
    return None


def _masks(name: str, layer: nn.Module) -> dict[str, torch.Tensor]:
    """Every prunable tensor's boolean mask (a baked layer's: its nonzero entries)."""
    masked = cast(MaskedMixin, layer)
    masks = {n: masked.get_mask(n) for n in masked.prunable}
    for n, mask in masks.items():
        if mask.dtype != torch.bool:
            raise LayerError(name, f"the mask of {n!r} is {mask.dtype}, not bool (a scorer's differentiable "
                                   "mask); only a model's boolean masks can be compacted")
    return masks


Bonds = list[tuple[str, _Bond]]  # every bond of a layer with the name of its chain


def _axes(bonds: Bonds) -> dict[str, list[tuple[int, int]]]:
    """For each tensor, its ``(view axis, bond number)`` pairs."""
    axes: dict[str, list[tuple[int, int]]] = {}
    for b, (_, bond) in enumerate(bonds):
        for tensor, axis in bond.sides:
            axes.setdefault(tensor, []).append((axis, b))
    return axes


def _restrict(t: torch.Tensor, axes: list[tuple[int, int]], keep: list[torch.Tensor]) -> torch.Tensor:
    for axis, b in axes:
        t = t.index_select(axis, keep[b])
    return t


def _live_indices(views: dict[str, torch.Tensor], bonds: Bonds) -> list[torch.Tensor]:
    """The indices of each bond that carry something, found as a fixpoint: an index stays while
    every slice it indexes keeps an entry among the other bonds' remaining indices. ``views``
    are the masks in their views; every bond of a chain with no path left is empty."""
    axes = _axes(bonds)
    keep = [torch.arange(views[t].shape[axis], device=views[t].device)
            for t, axis in (bond.sides[0] for _, bond in bonds)]
    changed = True
    while changed:
        changed = False
        for b, (chain, bond) in enumerate(bonds):
            if len(keep[b]) == 0:
                continue
            alive = torch.ones(len(keep[b]), dtype=torch.bool, device=keep[b].device)
            for tensor, axis in bond.sides:
                slices = _restrict(views[tensor], axes[tensor], keep).movedim(axis, 0)
                alive &= slices.reshape(slices.shape[0], -1).any(dim=1)
            if bool(alive.all()):
                continue
            keep[b], changed = keep[b][alive], True
            if len(keep[b]) == 0:  # no path is left through the chain: all its bonds go
                keep = [k[:0] if c == chain else k for (c, _), k in zip(bonds, keep)]
    return keep


@torch.no_grad()
def _compact_layer(name: str, layer: nn.Module,
                   build: Callable[[nn.Module, list[int]], nn.Module]) -> tuple[nn.Module, CompactionRecord]:
    """``layer`` rebuilt without its dead rank indices (itself when none is dead), and the record."""
    masked = cast(MaskedMixin, layer)
    layout = _layout(layer)
    masks = _masks(name, layer)
    views = {n: m.reshape(layout.views[n]) for n, m in masks.items()}
    bonds = [(chain, bond) for chain, chain_bonds in layout.chains.items() for bond in chain_bonds]
    keep = _live_indices(views, bonds)
    dead = sorted({chain for (chain, _), k in zip(bonds, keep) if len(k) == 0})
    # a chain with no path left keeps index 0 of every bond, all pruned
    keep = [k.new_zeros(1) if chain in dead else k for (chain, _), k in zip(bonds, keep)]
    pruned = {t for chain, bond in bonds if chain in dead for t, _ in bond.sides}
    after = list(layout.ranks)
    for (_, bond), k in zip(bonds, keep):
        for p in bond.positions:
            after[p] = len(k)
    record = _record(name, layer, layout, after, dead)
    if after == layout.ranks:
        return layer, record
    try:
        new = build(layer, after)
    except (TypeError, ValueError) as err:
        raise LayerError(name, f"cannot rebuild {type(layer).__name__} with ranks {after}: {err}") from None
    axes = _axes(bonds)
    for n in masked.prunable:
        value = cast(torch.Tensor, getattr(layer, n))
        target = cast(torch.Tensor, getattr(new, n))
        sliced = _restrict(value.detach().reshape(layout.views[n]), axes.get(n, []), keep)
        mask = _restrict(views[n], axes.get(n, []), keep).reshape(target.shape)
        target.copy_(sliced.reshape(target.shape))
        cast(MaskedMixin, new).set_mask(n, torch.zeros_like(mask) if n in pruned else mask)
    for n, param in layer.named_parameters(recurse=False):
        target = cast(torch.Tensor, getattr(new, n))
        if n not in masked.prunable:  # biases
            target.copy_(param)
        target.requires_grad_(param.requires_grad)
    # what the transform added to the description stays; the new layer's ranks win
    info = cast("dict[str, object]", getattr(new, "tedepr_info", {}))
    for key, item in cast("dict[str, object]", getattr(layer, "tedepr_info", {})).items():
        info.setdefault(key, item)
    if masked.baked:
        cast(MaskedMixin, new).bake_masks()
    new.train(layer.training)
    return new, record


def _record(name: str, layer: nn.Module, layout: _Layout, after: list[int], dead: list[str]) -> CompactionRecord:
    kind = type(layer).__name__
    if list(layout.chains) == [""]:
        return CompactionRecord(name, kind, list(layout.ranks), after, bool(dead))
    maps_before = {chain: layout.ranks[span] for chain, span in layout.spans.items()}
    maps_after = {chain: after[span] for chain, span in layout.spans.items()}
    first = next(iter(layout.spans))
    return CompactionRecord(name, kind, maps_before[first], maps_after[first], bool(dead),
                            maps_before, maps_after, dead)


def compact(model: nn.Module, *, inplace: bool = False) -> tuple[nn.Module, list[CompactionRecord]]:
    """``model`` with every TT, TR and Tucker layer rebuilt without its dead rank slices.

    TT / TR linear layers, convolutions and embeddings, and each TT map of a TT-LSTM, lose
    the bond indices whose core slice on either side is entirely pruned; Tucker-2 linear
    layers and convolutions the rank indices whose factor column or core slice is
    (repeated to a fixpoint, see the module docstring). Each rebuilt layer has the same class, modes and geometry, the
    kept slices of its factors and masks, its bias, ``requires_grad`` flags, mode, dtype
    and device; a layer shared under several names is rebuilt once. Outputs are the same
    up to float rounding, and the result trains like the input. A transformed model's
    record follows: each compacted layer's ``ranks``, ``stored`` and ``kept``, and its
    note starts with ``"ranks before compaction [...]"`` (so :func:`tedepr_fx.report`
    shows both). Returns ``(model, records)``, one record per layer of these kinds (in
    model order, compacted or not); ``model`` is a copy unless ``inplace=True``, and may
    itself be one such layer. Hooks registered on a rebuilt layer are not carried over.

    A model compacted this way saved with :func:`tedepr_fx.save` does not load back with
    :func:`tedepr_fx.load`, which re-applies the rewrite at the recorded ranks.

    Raises
    ------
    LayerError
        A mask is not boolean (a scorer's differentiable mask left in place), naming the layer.
    """
    out = model if inplace else copy.deepcopy(model)
    done: dict[int, tuple[nn.Module, CompactionRecord]] = {}
    records: list[CompactionRecord] = []
    for name, module in list(out.named_modules(remove_duplicate=False)):
        build = _builder(module)
        if build is None:
            continue
        if id(module) not in done:
            done[id(module)] = _compact_layer(name or "(root)", module, build)
            records.append(done[id(module)][1])
        new, record = done[id(module)]
        if new is module:
            continue
        if not name:
            return new, records
        replace_module(out, name, new)
    _update_rewrite(out, {id(new): record for new, record in done.values() if record.compacted})
    return out, records


def _update_rewrite(model: nn.Module, by_module: dict[int, CompactionRecord]) -> None:
    """Write the compacted layers' ranks, counts and notes into the transform's record, if any."""
    rewrite = getattr(model, RECORD_ATTR, None)
    if not isinstance(rewrite, Rewrite):
        return
    for layer_record in rewrite.records:
        if not layer_record.path:
            continue
        module = model.get_submodule(layer_record.path)
        compaction = by_module.get(id(module))
        if compaction is not None:
            _update_record(layer_record, module, compaction)


def _update_record(record: LayerRecord, module: nn.Module, compaction: CompactionRecord) -> None:
    """The record's ranks, counts and FLOPs read from the compacted ``module``; its note starts
    with the ranks before compaction (the first ones, when compacted again) and its FLOPs
    comparison with the dense layer (``transform``'s words) is redone."""
    masked = cast(MaskedMixin, module)
    record.ranks = list(compaction.ranks_after)
    record.stored = int(masked.stored_params())
    record.kept, record.kept_source = int(masked.kept_params()), "actual"
    if record.input_shape is not None:
        record.flops_after = int(cast(Callable[[tuple[int, ...]], int], module.flops)(
            tuple(record.input_shape)))
    parts = [p for p in record.note.split("; ") if p and not p.endswith(COST_WORDS)]
    if not any(p.startswith(NOTE) for p in parts):
        parts.insert(0, compaction.note)
    if record.cost_note:
        parts.append(record.cost_note)
    record.note = "; ".join(parts)
