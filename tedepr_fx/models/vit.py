"""Vision Transformer (Dosovitskiy et al. 2021) and a tiny sequence Transformer (Vaswani et al. 2017).

Both are built from ``nn.TransformerEncoderLayer``, so their attention is an
``nn.MultiheadAttention`` with a packed ``in_proj_weight`` and the feed-forward
layers are ``encoder.layers.N.linear1`` / ``.linear2``.

In eval mode under ``torch.no_grad()`` torch runs these layers through its fused
"fast path" (``torch._transformer_encoder_layer_fwd``); in training mode, or with
autograd on, it runs the Python path. The two compute the same function (tested
to float32 round-off). ``enable_nested_tensor`` is off because these models
never pass padding masks.

``torch.fx.symbolic_trace`` works on both models because the default tracer
keeps ``nn.TransformerEncoder`` (a ``torch.nn`` module) as one leaf
``call_module`` node. A tracer that descends into the encoder fails with
``TraceError: symbolically traced variables cannot be used as inputs to control
flow``: ``TransformerEncoder.forward`` and ``TransformerEncoderLayer.forward``
branch on properties of their input (``src.dim()``, ``src.is_nested``) to pick
the fast path, which a Proxy cannot answer.

References
----------
.. [1] A. Dosovitskiy et al., "An image is worth 16x16 words: Transformers for
   image recognition at scale", ICLR 2021.
.. [2] A. Vaswani et al., "Attention is all you need", NeurIPS 2017.
"""

from __future__ import annotations

import torch
from torch import nn

from tedepr_fx.models.lenet import _param_device


def _encoder(dim: int, heads: int, mlp_dim: int, depth: int, dropout: float, *,
             norm_first: bool, activation: str) -> nn.TransformerEncoder:
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
    layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=dropout, activation=activation,
                                       batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class ViT(nn.Module):
    """Vision Transformer [1]_: patch embedding, class token, pre-norm encoder, linear ``head``.

    Parameters
    ----------
    image_size, patch_size
        Side of the square input and of the square patches; ``patch_size`` must divide ``image_size``.
    in_channels
        Channels of the input images.
    num_classes
        Number of output logits.
    dim, depth, heads, mlp_dim
        Token width, number of encoder layers, attention heads, feed-forward width.
    dropout
        Dropout inside the encoder layers and after the position embedding.

    References
    ----------
    .. [1] A. Dosovitskiy et al., "An image is worth 16x16 words: Transformers
       for image recognition at scale", ICLR 2021.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3,
                 num_classes: int = 10, dim: int = 64, depth: int = 2, heads: int = 4,
                 mlp_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"ViT: patch_size ({patch_size}) must divide image_size ({image_size})")
        self.image_size = image_size
        self.in_channels = in_channels
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.dropout = nn.Dropout(dropout)
        self.encoder = _encoder(dim, heads, mlp_dim, depth, dropout, norm_first=True,
                                activation="gelu")
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        # truncated-normal(0.02) token and position embeddings, as in the reference ViT code
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, patches, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.dropout(torch.cat([cls, x], dim=1) + self.pos_embed)
        x = self.norm(self.encoder(x))
        logits: torch.Tensor = self.head(x[:, 0])
        return logits

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of shape ``(batch, in_channels, image_size, image_size)``."""
        return torch.randn(batch, self.in_channels, self.image_size, self.image_size,
                           device=_param_device(self))


def vit_b16(num_classes: int = 1000) -> ViT:
    """ViT-B/16 of [1]_ for 224x224 images (about 86.6 M parameters at 1000 classes).

    References
    ----------
    .. [1] A. Dosovitskiy et al., "An image is worth 16x16 words", ICLR 2021, Table 1.
    """
    return ViT(image_size=224, patch_size=16, in_channels=3, num_classes=num_classes, dim=768,
               depth=12, heads=12, mlp_dim=3072)


class TinyTransformer(nn.Module):
    """A small post-norm Transformer encoder classifier [1]_ over ``(N, T, in_features)`` sequences.

    ``proj`` (Linear) maps the features to ``dim``, ``encoder`` runs ``depth``
    ``nn.TransformerEncoderLayer``s, the tokens are mean-pooled and ``head``
    classifies. Any input whose trailing size is a multiple of ``in_features`` is
    read as a sequence of ``in_features``-wide tokens, so an 8x8 image
    ``(N, 1, 8, 8)`` with ``in_features=8`` is a sequence of its 8 rows.

    Parameters
    ----------
    in_features
        Width of one input token.
    dim, heads, depth
        Model width, attention heads, encoder layers.
    num_classes
        Number of output logits.
    mlp_dim
        Feed-forward width; ``2 * dim`` when None.
    seq_len
        Sequence length of :meth:`example_input` (the model accepts any length).

    References
    ----------
    .. [1] A. Vaswani et al., "Attention is all you need", NeurIPS 2017.
    """

    def __init__(self, in_features: int = 16, dim: int = 32, heads: int = 4, depth: int = 1,
                 num_classes: int = 10, mlp_dim: int | None = None, seq_len: int = 8):
        super().__init__()
        self.in_features = in_features
        self.seq_len = seq_len
        self.proj = nn.Linear(in_features, dim)
        self.encoder = _encoder(dim, heads, mlp_dim or 2 * dim, depth, 0.0, norm_first=False,
                                activation="relu")
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, self.in_features)
        x = self.encoder(self.proj(x))
        logits: torch.Tensor = self.head(x.mean(dim=1))
        return logits

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of shape ``(batch, seq_len, in_features)``."""
        return torch.randn(batch, self.seq_len, self.in_features, device=_param_device(self))
