"""Embedding layers: :class:`MaskedEmbedding` (``action: prune``) and the TT-embedding.

An ``nn.Embedding`` is a table ``(num_embeddings, embedding_dim)`` read by index: a
lookup is a gather, 0 multiply-adds (every FLOP count of this library is 2 x
multiply-adds; gathers, masks and additions are not counted).

* :class:`MaskedEmbedding` keeps the dense table and masks its entries. The mask
  *selects* (``torch.where``): a pruned entry, even ``inf`` or ``NaN``, never reaches
  the output, and only the rows asked for are read.
* :class:`TTMatrixEmbedding` (with the format's parts: :class:`TTEmbedding` here,
  :class:`tedepr_fx.formats.tr.TREmbedding` for a ring) stores the table as a
  TT-matrix whose rows are the vocabulary, ``prod(in_modes) >= num_embeddings``
  (padded up) and whose columns are the embedding, ``prod(out_modes) >=
  embedding_dim`` (Hrinchuk, Khrulkov, Mirvakhabova, Orlova and Oseledets,
  "Tensorized Embedding Layers", Findings of EMNLP 2020). A lookup computes only the
  rows asked for: each index is written in the mixed radix of the in modes, each digit
  gathers its core's slice ``(r_{k-1}, n_k, r_k)``, and the slices are multiplied
  token by token. The full table is never built (only :meth:`to_dense` builds it).

Neither layer supports ``max_norm`` (``nn.Embedding`` renormalises the rows it reads
in place, which has no meaning for a mask or a factorized table): they refuse it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.decompose.tt import tt_scratch_cores, tt_svd
from tedepr_fx.formats.base import Format, check_build_rank, check_init
from tedepr_fx.formats.tt import TT, ModesShape, decompose_tt_matrix, matrix_cores
from tedepr_fx.layers.masked import _MaskedDenseWeight
from tedepr_fx.layers.modes import select_modes
from tedepr_fx.layers.tt import TTCores, _check_tt_ranks, _checked_modes
from tedepr_fx.ranks import RankSpec

_DENSE_CHUNK = 8192  # rows per lookup when to_dense rebuilds a factorized table


def select(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``value`` where ``mask`` holds, else 0.

    A bool mask selects (``torch.where``): a pruned entry never reaches the result, even
    when it holds ``inf`` or ``NaN``, and gets no gradient. A float mask (the scorers
    substitute differentiable masks of ones, :mod:`tedepr_fx.scoring.base`) multiplies,
    so that ``d(out)/d(mask) = value * d(out)/d(value)``.
    """
    if mask.dtype == torch.bool:
        return torch.where(mask, value, 0)
    return value * mask


def refuse_max_norm(module: nn.Embedding, who: str) -> None:
    """``ValueError`` for an embedding with ``max_norm``, which ``who`` does not support."""
    if module.max_norm is not None:
        raise ValueError(
            f"{who} does not support max_norm (the embedding has max_norm={module.max_norm}): "
            "nn.Embedding renormalises the rows it reads in place, which has no meaning for a "
            "masked or factorized table; set max_norm=None or keep the layer dense (action: keep)"
        )


def _as_embedding(module: nn.Module, who: str) -> nn.Embedding:
    if not isinstance(module, nn.Embedding):
        raise TypeError(f"{who} expects nn.Embedding; got {type(module).__name__}")
    refuse_max_norm(module, who.split(".")[0])
    return module


def _check_indices(indices: torch.Tensor, count: int, who: str) -> None:
    """``IndexError`` (``TypeError`` for a non-integer tensor) unless every index is in ``[0, count)``.

    On CPU the check raises at once; on an accelerator, and in a traced program
    (``torch.compile``, ``torch.export``: the values are not known while tracing), it is
    asynchronous (``torch._assert_async``: no synchronisation); on meta there is nothing to check.
    """
    if indices.dtype not in (torch.long, torch.int32):
        raise TypeError(f"{who} expects indices of dtype long or int; got {indices.dtype}")
    if indices.device.type == "meta" or indices.numel() == 0:
        return
    bad = ((indices < 0) | (indices >= count)).any()
    if indices.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad):
            raise IndexError(f"{who}: index out of range (indices must be in [0, {count}); got "
                             f"min {int(indices.min())}, max {int(indices.max())})")
    else:
        torch._assert_async(~bad)


class MaskedEmbedding(_MaskedDenseWeight, nn.Embedding):
    """``nn.Embedding`` whose table carries a mask; parameter names and layout are unchanged.

    The lookup gathers the rows asked for and their masks and selects (:func:`select`): a
    pruned entry reads as 0 and gets no gradient. ``padding_idx``, ``scale_grad_by_freq``
    and ``sparse`` behave as in ``nn.Embedding``; ``max_norm`` is refused.

    Accounting: ``dense_params`` = stored = ``num_embeddings * embedding_dim``; kept = the
    mask's True entries; :meth:`flops` is 0 (a lookup multiplies nothing).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # nn.Embedding's arguments
        super().__init__(*args, **kwargs)
        if self.max_norm is not None:
            refuse_max_norm(self, type(self).__name__)
        self.init_masks()

    @classmethod
    def from_embedding(cls, embedding: nn.Module) -> MaskedEmbedding:
        """Wrap ``embedding``'s own table (shared, not copied) with an all-True mask."""
        emb = _as_embedding(embedding, f"{cls.__name__}.from_embedding")
        new = cls(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx,
                  norm_type=emb.norm_type, scale_grad_by_freq=emb.scale_grad_by_freq,
                  sparse=emb.sparse, device="meta")
        new.weight = emb.weight
        new.init_masks()
        new.train(emb.training)
        return new

    def masked(self, name: str) -> torch.Tensor:
        """The effective table: the stored one where the mask holds, 0 elsewhere (selected)."""
        value: torch.Tensor = getattr(self, name)
        mask = self.mask_buffer(name)
        return value if mask is None else select(value, mask)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input, self.weight, self.padding_idx, None, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
        mask = self.mask_buffer("weight")
        if mask is None:  # baked
            return rows
        # the rows' masks; a float mask (scoring) is differentiable, its padding row gets no gradient
        keep = F.embedding(input, mask, self.padding_idx)
        return select(rows, keep)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """0: a lookup is a gather (multiply-adds only are counted)."""
        return 0


class TTMatrixEmbedding(TTCores):
    """An embedding whose table ``(num_embeddings, embedding_dim)`` is a chain of TT-matrix cores.

    ``core_k`` has shape ``(r_{k-1}, m_k, n_k, r_k)``: the in modes ``m`` tensorize the
    vocabulary (``prod(m) = num_embeddings + in_pad``), the out modes ``n`` the embedding
    (``prod(n) = embedding_dim + out_pad``). Row ``i`` of the table, with digits
    ``(i_1, ..., i_d)`` of ``i`` in the radix ``m`` (``i_1`` most significant), is
    ``G_1[:, i_1] G_2[:, i_2] ... G_d[:, i_d]`` over the ranks, traced over the boundary
    bond ``R = r_0 = r_d`` (1 for a train). The shared body of :class:`TTEmbedding`
    (Hrinchuk et al., Findings of EMNLP 2020) and the ring's
    :class:`tedepr_fx.formats.tr.TREmbedding`; a subclass sets :attr:`fmt` and the
    format's parts (:meth:`_check_ranks`, :meth:`_scratch_cores`, :meth:`_svd`).

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        The dense table's shape.
    in_modes, out_modes : list[int]
        ``d`` modes each (see above).
    ranks : list[int]
        ``d + 1`` ranks of the format.
    padding_idx : int, optional
        As ``nn.Embedding``'s: that row of the effective table is 0 and a lookup of it
        sends no gradient to the cores (a negative value counts from the end).
    in_pad, out_pad : int
        Rows added to the vocabulary (never looked up) / columns dropped from each row.
    init_var : float
        Entry variance of the scratch table: 1 for ``nn.Embedding``'s ``N(0, 1)``.

    Notes
    -----
    A lookup of ``B`` tokens gathers ``B`` slices of each core and multiplies them left to
    right (:meth:`lookup_sizes`): the largest running product has ``B R n_1..n_k r_k``
    entries for some ``k < d``, at most ``B R r embedding_dim / n_d``, never the table; a
    ring's trace is folded into the last product. :meth:`flops` counts
    ``2 R sum_{k>=2} n_1..n_{k-1} r_{k-1} n_k r_k`` per token. ``sparse`` gradients do not
    apply (the cores are small and dense); ``scale_grad_by_freq`` and ``max_norm`` are refused.
    """

    fmt: ClassVar[Format[ModesShape]]

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        in_modes: list[int],
        out_modes: list[int],
        ranks: list[int],
        padding_idx: int | None = None,
        in_pad: int = 0,
        out_pad: int = 0,
        init_var: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_modes, out_modes, ranks = _checked_modes(in_modes, out_modes, ranks, num_embeddings,
                                                    embedding_dim, in_pad, out_pad)
        self._check_ranks(ranks, len(in_modes))
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx {padding_idx} is outside the {num_embeddings} embeddings")
            padding_idx = padding_idx % num_embeddings
        self.padding_idx = padding_idx
        dims = [m * n for m, n in zip(in_modes, out_modes)]
        flat = self._scratch_cores(dims, ranks, init_var, device=device, dtype=dtype)
        self._init_cores(self.fmt.name, in_modes, out_modes, ranks, in_pad, out_pad,
                         matrix_cores(flat, in_modes, out_modes, ranks), False, embedding_dim, 1,
                         device, dtype)
        self.tedepr_info["padding_idx"] = padding_idx

    @property
    def dense_params(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}, in_modes={self.in_modes}, "
                f"out_modes={self.out_modes}, ranks={self.ranks}{pad}")

    def masked(self, name: str) -> torch.Tensor:
        """A core where its mask holds, 0 elsewhere (selected, see :func:`select`)."""
        value: torch.Tensor = getattr(self, name)
        mask = self.mask_buffer(name)
        return value if mask is None else select(value, mask)

    # --- the lookup ------------------------------------------------------------------------------

    def lookup_sizes(self, tokens: int) -> list[tuple[int, ...]]:
        """Shapes of the running products of a lookup of ``tokens`` indices: ``(tokens, R n_1 ..
        n_k, r_k)`` for every core but the last, then the rows ``(tokens, prod(out_modes))``
        (padding columns not yet dropped)."""
        ring = self.ranks[0]
        sizes: list[tuple[int, ...]] = []
        cols = 1
        for k, n in enumerate(self.out_modes[:-1]):
            cols *= n
            sizes.append((tokens, ring * cols, self.ranks[k + 1]))
        return [*sizes, (tokens, cols * self.out_modes[-1])]

    def token_flops(self) -> int:
        """FLOPs (2 x multiply-adds) of one token's lookup: the slice products (a ring's trace is
        folded into the last one)."""
        ring, total, cols = self.ranks[0], 0, self.out_modes[0]
        for k in range(1, len(self.out_modes)):
            total += 2 * ring * cols * self.ranks[k] * self.out_modes[k] * self.ranks[k + 1]
            cols *= self.out_modes[k]
        return total

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """FLOPs of a lookup of an index tensor of this shape: tokens x :meth:`token_flops`."""
        return math.prod(input_shape) * self.token_flops()

    def _rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows ``(B, embedding_dim)`` of the effective table for flat ``indices`` ``(B,)``.

        Padding rows included (``padding_idx`` is applied by the caller)."""
        tokens = indices.shape[0]
        digits = []
        rest = indices
        for m in reversed(self.in_modes):  # mixed radix, the first mode most significant
            digits.append(rest % m)
            rest = torch.div(rest, m, rounding_mode="floor")
        digits.reverse()
        ring, last = self.ranks[0], len(self.in_modes) - 1
        out: torch.Tensor | None = None
        for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes)):
            core = self.masked(f"core_{k}")  # (r_{k-1}, m_k, n_k, r_k)
            left, right = core.shape[0], core.shape[3]
            piece = F.embedding(digits[k], core.permute(1, 0, 2, 3).reshape(m, left * n * right))
            if out is None:  # (B, R n_1, r_1): the boundary bond stays open on the left
                out = piece.reshape(tokens, left * n, right)
            elif k == last and ring > 1:
                # close the ring in the last product: sum_a out[:, a, J, :] @ piece[:, :, j, a]
                # (B, N, R r_{d-1}) x (B, R r_{d-1}, n_d) -> (B, N n_d), no (B, R N, R) tensor
                wide = out.reshape(tokens, ring, -1, left).transpose(1, 2).reshape(tokens, -1, ring * left)
                closing = piece.reshape(tokens, left, n, ring).permute(0, 3, 1, 2).reshape(tokens, -1, n)
                out = torch.bmm(wide, closing)
            else:  # (B, R N, r_{k-1}) x (B, r_{k-1}, n_k r_k) -> (B, R N n_k, r_k)
                out = torch.bmm(out, piece.reshape(tokens, left, n * right)).reshape(tokens, -1, right)
        assert out is not None
        rows = out.reshape(tokens, math.prod(self.out_modes))
        return rows[:, : self.embedding_dim] if self.out_pad else rows

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_indices(input, self.num_embeddings, type(self).__name__)
        flat = input.reshape(-1)
        rows = self._rows(flat)
        if self.padding_idx is not None:  # a zero row that sends no gradient back
            rows = torch.where((flat == self.padding_idx).unsqueeze(1), 0, rows)
        return rows.reshape(*input.shape, self.embedding_dim)

    def to_dense(self) -> torch.Tensor:
        """The effective (masked) table ``(num_embeddings, embedding_dim)``, built in chunks of rows."""
        core = self.get_parameter("core_0")
        with torch.no_grad():
            index = torch.arange(self.num_embeddings, device=core.device)
            table = torch.cat([self._rows(index[start:start + _DENSE_CHUNK])
                               for start in range(0, self.num_embeddings, _DENSE_CHUNK)])
            if self.padding_idx is not None:
                table[self.padding_idx] = 0
            return table

    @classmethod
    def from_embedding(cls, module: nn.Module, rank: RankSpec, modes: object = "auto",
                       init: str = "scratch") -> Self:
        """A factorized embedding of this format replacing ``module`` (an ``nn.Embedding``).

        Parameters
        ----------
        module : nn.Embedding
            The embedding to replace; may live on the ``meta`` device with ``init="scratch"``.
        rank : RankSpec
            Resolved by the format over the modes (not ``"auto"``).
        modes : "auto" or (in_modes, out_modes)
            ``"auto"``: :func:`tedepr_fx.layers.modes.auto_modes` of ``(num_embeddings,
            embedding_dim)`` (may pad the vocabulary and the dimension); explicit modes
            multiply to the table's shape exactly.
        init : {"scratch", "decompose"}
            ``"scratch"``: random cores whose table has the entry variance of the
            embedding's own table (its mean square: 1 for ``nn.Embedding``'s ``N(0, 1)``
            init, ``initializer_range**2`` for a Hugging Face model's; 1 on meta or for a
            zero table). ``"decompose"``: the format's SVD of the table (zero-padded to the
            modes); at ``rank="full"`` the lookup is exact.
        """
        init = check_init(init)
        rank = check_build_rank(rank)
        emb = _as_embedding(module, f"{cls.__name__}.from_embedding")
        if emb.scale_grad_by_freq:
            raise ValueError(f"{cls.__name__} does not support scale_grad_by_freq=True (its gradients "
                             "reach the shared cores, not per-word rows); keep the layer dense or prune it")
        in_modes, out_modes, in_pad, out_pad = select_modes(modes, emb.num_embeddings, emb.embedding_dim)
        ranks = cls.fmt.resolve_ranks(rank, (in_modes, out_modes))
        weight = emb.weight
        new = cls(emb.num_embeddings, emb.embedding_dim, in_modes, out_modes, ranks,
                  padding_idx=emb.padding_idx, in_pad=in_pad, out_pad=out_pad,
                  init_var=_table_variance(weight), device=weight.device, dtype=weight.dtype)
        new._copy_from(weight, None, init,
                       lambda: decompose_tt_matrix(weight, in_modes, out_modes, ranks, svd=cls._svd),
                       "the embedding")
        new.train(emb.training)
        return new


def _table_variance(weight: torch.Tensor) -> float:
    """The mean square of a table's entries (its init variance); 1 on meta or when not finite or 0."""
    if weight.device.type == "meta" or weight.numel() == 0:
        return 1.0
    with torch.no_grad():
        value = float(weight.detach().double().pow(2).mean())
    return value if math.isfinite(value) and value > 0 else 1.0


class TTEmbedding(TTMatrixEmbedding):
    """An embedding whose table is a TT-matrix (Hrinchuk et al., "Tensorized Embedding
    Layers", Findings of EMNLP 2020); ``ranks`` are ``d + 1`` TT ranks with ends 1.

    ``init="decompose"`` runs TT-SVD (Oseledets 2011) on the table; see
    :class:`TTMatrixEmbedding` for the lookup and the accounting.

    >>> emb = TTEmbedding.from_embedding(nn.Embedding(1000, 32), 8, modes=([10, 10, 10], [4, 4, 2]))
    >>> emb.ranks, emb.stored_params(), emb(torch.tensor([[3, 999]])).shape
    ([1, 8, 8, 1], 3040, torch.Size([1, 2, 32]))
    """

    fmt = TT
    _scratch_cores = staticmethod(tt_scratch_cores)
    _svd = staticmethod(tt_svd)
    _check_ranks = staticmethod(_check_tt_ranks)
