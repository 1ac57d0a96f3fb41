"""An LSTM whose input-to-hidden maps are tensor-train matrices (TT-LSTM).

Yang, Krompass and Tresp, "Tensor-Train Recurrent Neural Networks for Video
Classification", ICML 2017: the huge input-to-hidden map of a frame-level LSTM is a
TT-matrix (Novikov et al., NeurIPS 2015), applied to all time steps at once; the
recurrence itself is the standard LSTM (gate order i, f, g, o as in ``nn.LSTM``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypedDict, cast

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.decompose.tt import tt_scratch_cores
from tedepr_fx.formats.base import check_build_rank, check_init
from tedepr_fx.formats.tt import decompose_tt_matrix, resolve_tt_ranks
from tedepr_fx.layers.cache import EvalCache
from tedepr_fx.layers.contraction import choose_order, group_cores, shape_hint, tt_chain_apply
from tedepr_fx.layers.masked import MaskedMixin
from tedepr_fx.layers.modes import auto_modes, select_modes
from tedepr_fx.ranks import RankSpec


class TTMapSpec(TypedDict):
    """One TT map of a :class:`TTLSTM`: its modes, ranks and padding (see :func:`auto_modes`)."""

    in_modes: list[int]
    out_modes: list[int]
    ranks: list[int]
    in_pad: int
    out_pad: int


class TTLSTM(EvalCache, MaskedMixin, nn.Module):
    """Drop-in ``nn.LSTM`` (unidirectional, no projection) with TT input-to-hidden maps.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, dropout
        As in ``nn.LSTM``.
    maps : list[TTMapSpec]
        For every TT map, ``{"in_modes", "out_modes", "ranks", "in_pad", "out_pad"}``:
        first the input-to-hidden map of each layer, then (if ``hidden_to_hidden``)
        the hidden-to-hidden map of each layer. Build with :meth:`from_lstm` or
        :meth:`resolve_maps`.
    hidden_to_hidden : bool
        Whether the hidden-to-hidden maps are TT too (else dense ``weight_hh_l{k}``).

    Tensors: ``ih_l{k}_core_{j}`` (TT cores), ``hh_l{k}_core_{j}`` or ``weight_hh_l{k}``
    (``(4 hidden, hidden)``), ``bias_l{k}`` (``b_ih + b_hh`` of ``nn.LSTM``). Every core
    and dense hidden-to-hidden weight is prunable.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        maps: Sequence[TTMapSpec],
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        hidden_to_hidden: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if bidirectional:
            raise NotImplementedError("TTLSTM does not support bidirectional=True")
        if proj_size:
            raise NotImplementedError(f"TTLSTM does not support proj_size > 0; got proj_size={proj_size}")
        n_maps = num_layers * (2 if hidden_to_hidden else 1)
        if len(maps) != n_maps:
            raise ValueError(f"maps must describe {n_maps} TT maps; got {len(maps)}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = False, 0
        self.hidden_to_hidden = hidden_to_hidden
        self.maps = [TTMapSpec(**m) for m in maps]  # copies
        gate = 4 * hidden_size
        target_var = 1.0 / (3 * hidden_size)  # nn.LSTM: U(-1/sqrt(hidden), 1/sqrt(hidden))
        bound = 1.0 / math.sqrt(hidden_size)
        prunable: list[str] = []
        for layer in range(num_layers):
            in_f = input_size if layer == 0 else hidden_size
            prunable += self._add_tt(f"ih_l{layer}", maps[layer], in_f, gate, target_var, device, dtype)
            if hidden_to_hidden:
                prunable += self._add_tt(f"hh_l{layer}", maps[num_layers + layer], hidden_size, gate,
                                         target_var, device, dtype)
            else:
                w = torch.empty(gate, hidden_size, device=device, dtype=dtype)
                if w.device.type != "meta":
                    nn.init.uniform_(w, -bound, bound)
                setattr(self, f"weight_hh_l{layer}", nn.Parameter(w))
                prunable.append(f"weight_hh_l{layer}")
            if bias:
                b = torch.empty(gate, device=device, dtype=dtype)
                if b.device.type != "meta":
                    # the sum of two U(-bound, bound) biases, as nn.LSTM's b_ih + b_hh
                    b.copy_(torch.empty_like(b).uniform_(-bound, bound) + torch.empty_like(b).uniform_(-bound, bound))
                setattr(self, f"bias_l{layer}", nn.Parameter(b))
        self.prunable = tuple(prunable)
        self.init_masks()
        self.tedepr_info = {
            "format": "tt",
            "ranks": self.maps[0]["ranks"],
            "in_modes": self.maps[0]["in_modes"],
            "out_modes": self.maps[0]["out_modes"],
            "in_padding": self.maps[0]["in_pad"],
            "out_padding": self.maps[0]["out_pad"],
            "maps": [dict(name=n, **m) for n, m in zip(self._map_names(), self.maps)],
            "hidden_to_hidden": hidden_to_hidden,
        }

    def _map_names(self) -> list[str]:
        names = [f"ih_l{k}" for k in range(self.num_layers)]
        if self.hidden_to_hidden:
            names += [f"hh_l{k}" for k in range(self.num_layers)]
        return names

    def _add_tt(self, prefix: str, spec: TTMapSpec, in_f: int, out_f: int, target_var: float,
                device: torch.device | str | None, dtype: torch.dtype | None) -> list[str]:
        in_modes, out_modes, ranks = spec["in_modes"], spec["out_modes"], spec["ranks"]
        if math.prod(in_modes) != in_f + spec["in_pad"] or math.prod(out_modes) != out_f + spec["out_pad"]:
            raise ValueError(f"{prefix}: modes {in_modes} -> {out_modes} do not match {in_f} -> {out_f} features")
        dims = [m * n for m, n in zip(in_modes, out_modes)]
        names: list[str] = []
        for k, core in enumerate(tt_scratch_cores(dims, ranks, target_var, device=device, dtype=dtype)):
            name = f"{prefix}_core_{k}"
            setattr(self, name, nn.Parameter(core.reshape(ranks[k], in_modes[k], out_modes[k], ranks[k + 1])))
            names.append(name)
        return names

    @property
    def dense_params(self) -> int:
        """All weight matrices of the original ``nn.LSTM`` (input- and hidden-to-hidden, every layer)."""
        gate = 4 * self.hidden_size
        return gate * (self.input_size + self.hidden_size) + (self.num_layers - 1) * gate * 2 * self.hidden_size

    def _map_cores(self, prefix: str) -> list[str]:
        return [n for n in self.prunable if n.startswith(prefix + "_core_")]

    def _tt_map(self, index: int, prefix: str,
                n_rows: int | torch.SymInt) -> Callable[[torch.Tensor], torch.Tensor]:
        """``rows -> rows @ W`` for one TT map, its super-cores merged once for ``n_rows`` rows.

        The merge is reused by every call (the recurrence calls the hidden-to-hidden
        map once per time step) and, in eval mode without autograd, across forwards.
        """
        spec = self.maps[index]
        rows_hint = shape_hint((n_rows,))[0]
        (direction, groups), _ = choose_order(rows_hint, spec["in_modes"], spec["out_modes"], spec["ranks"])
        names = self._map_cores(prefix)
        cores = self.cached(prefix, groups, names, lambda: group_cores([self.masked(n) for n in names], groups))

        def apply(rows: torch.Tensor) -> torch.Tensor:
            if spec["in_pad"]:
                rows = F.pad(rows, (0, spec["in_pad"]))
            out = tt_chain_apply(rows, cores, direction)
            return out[:, : 4 * self.hidden_size] if spec["out_pad"] else out
        return apply

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of one forward over ``(T, B, input)`` (or batch-first / unbatched) input."""
        rows = math.prod(input_shape[:-1])
        if len(input_shape) == 3:
            batch = input_shape[0] if self.batch_first else input_shape[1]
        else:
            batch = 1
        steps = rows // batch
        gate, total = 4 * self.hidden_size, 0
        for layer in range(self.num_layers):
            spec = self.maps[layer]
            total += choose_order(rows, spec["in_modes"], spec["out_modes"], spec["ranks"])[1]
            if self.hidden_to_hidden:
                spec = self.maps[self.num_layers + layer]
                total += steps * choose_order(batch, spec["in_modes"], spec["out_modes"], spec["ranks"])[1]
            else:
                total += 2 * rows * gate * self.hidden_size
        return total

    def forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"TTLSTM expects input of size {self.input_size} in the last dim; got {tuple(x.shape)}")
        steps, batch = x.shape[0], x.shape[1]
        if hx is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            hx = (zeros, zeros)
        h_last: list[torch.Tensor] = []
        c_last: list[torch.Tensor] = []
        seq = x
        for layer in range(self.num_layers):
            # the TT input map for every time step at once, then the recurrence
            gates_x = self._tt_map(layer, f"ih_l{layer}", steps * batch)(seq.reshape(steps * batch, -1))
            if self.bias:
                gates_x = gates_x + getattr(self, f"bias_l{layer}")
            gates_x = gates_x.reshape(steps, batch, -1)
            recurrent: Callable[[torch.Tensor], torch.Tensor]
            if self.hidden_to_hidden:
                recurrent = self._tt_map(self.num_layers + layer, f"hh_l{layer}", batch)
            else:
                recurrent = partial(F.linear, weight=self.masked(f"weight_hh_l{layer}"))
            h, c = hx[0][layer], hx[1][layer]
            outs = []
            for t in range(steps):
                rec = recurrent(h)
                i, f, g, o = (gates_x[t] + rec).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            seq = torch.stack(outs)
            h_last.append(h)
            c_last.append(c)
            if self.dropout and self.training and layer < self.num_layers - 1:
                seq = F.dropout(seq, self.dropout, training=True)
        h_n, c_n = torch.stack(h_last), torch.stack(c_last)
        if unbatched:
            return seq.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            seq = seq.transpose(0, 1)
        return seq, (h_n, c_n)

    def to_dense(self) -> torch.Tensor:
        """Effective weights of the original layout, flattened and concatenated in ``nn.LSTM``'s order.

        ``weight_ih_l0, weight_hh_l0, weight_ih_l1, ...`` (each ``(4 hidden, in)``),
        matching the flattened dense shape the layer registry counts.
        """
        with torch.no_grad():
            parts = []
            for layer in range(self.num_layers):
                parts.append(self.dense_map(f"ih_l{layer}").reshape(-1))
                parts.append(self.dense_map(f"hh_l{layer}").reshape(-1))
            return torch.cat(parts)

    def dense_map(self, name: str) -> torch.Tensor:
        """One effective weight ``(4 hidden, in)``: ``"ih_l0"``, ``"hh_l1"``, ..."""
        if name.startswith("hh_") and not self.hidden_to_hidden:
            return self.masked(f"weight_{name}")
        index = self._map_names().index(name)
        spec = self.maps[index]
        full = group_cores([self.masked(n) for n in self._map_cores(name)], (len(spec["in_modes"]),))[0]
        w_io = full.reshape(full.shape[1], full.shape[2])
        in_f = math.prod(spec["in_modes"]) - spec["in_pad"]
        return w_io[:in_f, : 4 * self.hidden_size].t()

    @staticmethod
    def resolve_maps(input_size: int, hidden_size: int, num_layers: int, rank: RankSpec, modes: object = "auto",
                     hidden_to_hidden: bool = False) -> list[TTMapSpec]:
        """Resolve modes and ranks of every TT map.

        Explicit ``modes`` (``(in_modes, out_modes)``) must fit ``ih_l0`` and apply to
        every other map of the same sizes too (``ih_l1..``, ``hh_l*`` when
        ``input_size == hidden_size``); the maps they do not fit get auto modes.
        """
        rank = check_build_rank(rank)
        gate = 4 * hidden_size
        sizes = [(input_size if k == 0 else hidden_size, gate) for k in range(num_layers)]
        if hidden_to_hidden:
            sizes += [(hidden_size, gate)] * num_layers
        maps: list[TTMapSpec] = []
        for in_f, out_f in sizes:
            if (in_f, out_f) == sizes[0]:
                in_modes, out_modes, in_pad, out_pad = select_modes(modes, in_f, out_f)
            else:
                in_modes, out_modes, in_pad, out_pad = auto_modes(in_f, out_f)
            ranks = resolve_tt_ranks(rank, in_modes, out_modes)
            maps.append(TTMapSpec(in_modes=in_modes, out_modes=out_modes, ranks=ranks, in_pad=in_pad, out_pad=out_pad))
        return maps

    @classmethod
    def from_lstm(
        cls, lstm: nn.LSTM, rank: RankSpec, modes: object = "auto", init: str = "scratch",
        hidden_to_hidden: bool = False,
    ) -> TTLSTM:
        """A TT-LSTM replacing ``lstm`` (Yang et al., ICML 2017).

        ``init="decompose"`` runs TT-SVD (Oseledets 2011) on every factorized map and
        copies the dense hidden-to-hidden weights; ``rank="full"`` reproduces ``lstm``.
        Biases are copied as ``b_ih + b_hh`` for both inits.
        """
        init = check_init(init)
        rank = check_build_rank(rank)
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"TTLSTM.from_lstm expects nn.LSTM; got {type(lstm).__name__}")
        if lstm.bidirectional:
            raise NotImplementedError("TTLSTM does not support bidirectional=True")
        if lstm.proj_size:
            raise NotImplementedError(f"TTLSTM does not support proj_size > 0; got proj_size={lstm.proj_size}")
        maps = cls.resolve_maps(lstm.input_size, lstm.hidden_size, lstm.num_layers, rank, modes, hidden_to_hidden)
        ref = cast(torch.Tensor, lstm.weight_ih_l0)  # registered by nn.LSTM at run time; undeclared in torch
        new = cls(lstm.input_size, lstm.hidden_size, maps, num_layers=lstm.num_layers, bias=lstm.bias,
                  batch_first=lstm.batch_first, dropout=lstm.dropout, hidden_to_hidden=hidden_to_hidden,
                  device=ref.device, dtype=ref.dtype)
        real = ref.device.type != "meta"
        if init == "decompose" and not real:
            raise ValueError("init='decompose' needs real weights; the LSTM is on the meta device")
        with torch.no_grad():
            for layer in range(lstm.num_layers):
                if lstm.bias and real:
                    getattr(new, f"bias_l{layer}").copy_(
                        getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}"))
                if init != "decompose":
                    continue
                todo = [(layer, f"ih_l{layer}", getattr(lstm, f"weight_ih_l{layer}"))]
                w_hh = getattr(lstm, f"weight_hh_l{layer}")
                if hidden_to_hidden:
                    todo.append((lstm.num_layers + layer, f"hh_l{layer}", w_hh))
                else:
                    getattr(new, f"weight_hh_l{layer}").copy_(w_hh)
                for index, prefix, w in todo:
                    spec = maps[index]
                    cores = decompose_tt_matrix(w.t(), spec["in_modes"], spec["out_modes"], spec["ranks"])
                    for k, core in enumerate(cores):
                        getattr(new, f"{prefix}_core_{k}").copy_(core)
        return new
