"""Multi-head attention with separate q / k / v projection modules.

``nn.MultiheadAttention`` packs the three input projections into one
``in_proj_weight`` (3E x E), which no per-layer rule can address. The match pass
swaps it for :class:`SplitMultiheadAttention`, which holds ``q_proj``, ``k_proj``,
``v_proj`` and ``out_proj`` as ordinary ``nn.Linear`` modules that rules select by
name (``...self_attn.q_proj``) and the factorize pass can replace. The swap is
exact: same call signature, same outputs (up to float rounding of the fused kernels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SplitMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` whose projections are separate modules.

    Attributes that ``nn.TransformerEncoderLayer`` inspects (``batch_first``,
    ``num_heads``, ``in_proj_bias``, ``_qkv_same_embed_dim``) are kept so that it
    takes its regular (non-fused) path.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        kw = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        # what nn.TransformerEncoder(Layer) reads to decide on its fused fast path
        self._qkv_same_embed_dim = False
        self.in_proj_weight = None
        self.in_proj_bias = None

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """Split a ``nn.MultiheadAttention`` into four linears sharing its exact weights."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv=True or add_zero_attn=True cannot be split"
            )
        w = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias=mha.in_proj_bias is not None,
                  kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first,
                  device="meta", dtype=w.dtype)
        e = mha.embed_dim
        with torch.no_grad():
            weights: Sequence[torch.Tensor]
            if mha._qkv_same_embed_dim:
                weights = torch.split(mha.in_proj_weight.detach(), e, dim=0)
            else:
                weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(),
                           mha.v_proj_weight.detach())
            biases: Sequence[torch.Tensor | None] = (
                torch.split(mha.in_proj_bias.detach(), e) if mha.in_proj_bias is not None
                else (None, None, None))
            for proj, weight, bias in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                proj.weight = nn.Parameter(weight.clone(), requires_grad=mha.out_proj.weight.requires_grad)
                if bias is not None:
                    proj.bias = nn.Parameter(bias.clone())
        new.out_proj = mha.out_proj
        new.train(mha.training)
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt_len, bsz, _ = query.shape
        src_len = key.shape[0]
        heads, hd = self.num_heads, self.head_dim

        q = self.q_proj(query).reshape(tgt_len, bsz, heads, hd).permute(1, 2, 0, 3)
        k = self.k_proj(key).reshape(src_len, bsz, heads, hd).permute(1, 2, 0, 3)
        v = self.v_proj(value).reshape(src_len, bsz, heads, hd).permute(1, 2, 0, 3)

        mask = self._merged_mask(attn_mask, key_padding_mask, bsz, tgt_len, src_len, q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        weights: torch.Tensor | None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = weights @ v
        else:
            causal_only = is_causal and key_padding_mask is None
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if causal_only else mask, dropout_p=dropout_p,
                is_causal=causal_only,
            )
            weights = None
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim))
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    @staticmethod
    def _merged_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, bsz: int,
                     tgt_len: int, src_len: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive float mask of shape broadcastable to (N, H, L, S), or None."""

        def additive(m: torch.Tensor | None) -> torch.Tensor | None:
            if m is None:
                return None
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            return m.to(dtype)

        mask = additive(attn_mask)
        if mask is not None and mask.dim() == 3:  # (N * H, L, S)
            mask = mask.reshape(bsz, -1, tgt_len, src_len)
        kpm = additive(key_padding_mask)
        if kpm is not None:
            kpm = kpm.reshape(bsz, 1, 1, src_len)
            mask = kpm if mask is None else mask + kpm
        return mask
