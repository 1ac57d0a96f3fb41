"""The registry of layer kinds: how to read, rebuild and count each kind of layer.

Supporting a new kind of layer is one :class:`LayerKind` added with
:func:`register`; the passes only ever talk to this registry. Registered: ``linear``,
``hf_conv1d`` (Hugging Face ``Conv1D``), ``conv2d``, ``lstm`` and ``embedding``
(``nn.Embedding``: a lookup, 0 FLOPs; pruned as :class:`~tedepr_fx.layers.embedding.MaskedEmbedding`,
factorized as a TT- or TR-embedding).

Each kind knows

* which modules it claims (``claims``) and the type names rules can select it by;
* the shape of its dense weight (``dense_shape``), so budgets are counted
  against the original weights;
* its masked form for ``action: prune`` (``masked``);
* the FLOPs of the dense layer for an input shape (``dense_flops``).

Its factorized form comes from the format (:mod:`tedepr_fx.formats`): the kind asks
the format for its layer (:meth:`LayerKind.build`), and the formats that support a
kind are those whose builders name it (:attr:`LayerKind.formats`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tedepr_fx.formats.base import formats_for, get_format
from tedepr_fx.layers.hf import is_hf_conv1d
from tedepr_fx.layers.masked import MaskedMixin, conv2d_output_hw, linear_flops
from tedepr_fx.ranks import RankSpec


@dataclass(frozen=True)
class LayerKind:
    """One kind of weight-bearing layer and everything the passes need to know about it."""

    name: str
    claims: Callable[[nn.Module], bool]
    dense_shape: Callable[[nn.Module], tuple[int, ...]]
    dense_flops: Callable[[nn.Module, tuple[int, ...]], int]
    masked: Callable[[nn.Module], nn.Module] | None = None  # the dense masked layer of action: prune
    # names a rule's `type:` can use besides the class names of the module's MRO
    aliases: tuple[str, ...] = ()

    @property
    def formats(self) -> tuple[str, ...]:
        """The registered formats that can replace this kind of layer."""
        return formats_for(self.name)

    def build(self, format_name: str, module: nn.Module, rank: RankSpec, modes: object = "auto",
              init: str = "scratch") -> nn.Module:
        """The factorized layer of format ``format_name`` replacing ``module`` (see :meth:`Format.build`)."""
        return get_format(format_name).build(self.name, module, rank, modes, init)

    def build_masked(self, module: nn.Module) -> nn.Module:
        """The masked dense layer of ``action: prune``."""
        if self.masked is None:
            raise ValueError(f"{self.name} layers cannot be pruned")
        return self.masked(module)

    def dense_params(self, module: nn.Module) -> int:
        n = 1
        for s in self.dense_shape(module):
            n *= s
        return n


_REGISTRY: list[LayerKind] = []


def register(kind: LayerKind) -> LayerKind:
    """Add a layer kind; later registrations take precedence over earlier ones."""
    _REGISTRY.insert(0, kind)
    return kind


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind that claims ``module``, or None. Modules tedepr_fx already built are never claimed."""
    if isinstance(module, MaskedMixin):
        return None
    for kind in _REGISTRY:
        if kind.claims(module):
            return kind
    return None


def kinds() -> list[LayerKind]:
    return list(_REGISTRY)


def type_names(module: nn.Module, kind: LayerKind | None = None) -> frozenset[str]:
    """Names a rule's ``type:`` may use for this module: class names and dotted paths along its MRO."""
    names: set[str] = set()
    for cls in type(module).__mro__:
        if cls in (nn.Module, object):
            break
        names.add(cls.__name__)
        names.add(f"{cls.__module__}.{cls.__qualname__}")
    if kind is not None:
        names.update(kind.aliases)
    return frozenset(names)


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    """Shape of a layer's ``weight`` parameter."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is not a tensor")
    return tuple(weight.shape)


def _linear_flops(module: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of ``nn.Linear`` (weight ``(out, in)``) or HF ``Conv1D`` (weight ``(in, out)``)."""
    rows, cols = _weight_shape(module)
    in_f, out_f = (rows, cols) if is_hf_conv1d(module) else (cols, rows)
    return linear_flops(shape, in_f, out_f)


# --- nn.Linear -----------------------------------------------------------------------------------


def _masked_linear(module: nn.Module) -> nn.Module:
    from tedepr_fx.layers.masked import MaskedLinear

    assert isinstance(module, nn.Linear)
    return MaskedLinear.from_linear(module)


LINEAR = register(
    LayerKind(
        name="linear",
        claims=lambda m: isinstance(m, nn.Linear),
        dense_shape=_weight_shape,
        dense_flops=_linear_flops,
        masked=_masked_linear,
    )
)


# --- Hugging Face Conv1D (a linear layer whose weight is stored transposed) ------------------------


def _masked_conv1d(module: nn.Module) -> nn.Module:
    from tedepr_fx.layers.masked import MaskedTransposedLinear

    return MaskedTransposedLinear.from_hf_conv1d(module)


HF_CONV1D = register(
    LayerKind(
        name="hf_conv1d",
        claims=is_hf_conv1d,
        dense_shape=_weight_shape,  # (in, out)
        dense_flops=_linear_flops,
        masked=_masked_conv1d,
    )
)


# --- nn.Conv2d -----------------------------------------------------------------------------------


def _masked_conv(module: nn.Module) -> nn.Module:
    from tedepr_fx.layers.masked import MaskedConv2d

    assert isinstance(module, nn.Conv2d)
    return MaskedConv2d.from_conv(module)


def _conv_flops(m: nn.Module, shape: tuple[int, ...]) -> int:
    assert isinstance(m, nn.Conv2d)
    out_h, out_w = conv2d_output_hw(shape[-2:], m.kernel_size, m.stride, m.padding, m.dilation)
    batch = shape[0] if len(shape) == 4 else 1
    return 2 * batch * out_h * out_w * m.weight.numel()


CONV2D = register(
    LayerKind(
        name="conv2d",
        claims=lambda m: isinstance(m, nn.Conv2d),
        dense_shape=_weight_shape,
        dense_flops=_conv_flops,
        masked=_masked_conv,
    )
)


# --- nn.LSTM -------------------------------------------------------------------------------------


def _masked_lstm(module: nn.Module) -> nn.Module:
    from tedepr_fx.layers.masked_lstm import MaskedLSTM

    assert isinstance(module, nn.LSTM)
    return MaskedLSTM.from_lstm(module)


def _lstm_weights(m: nn.Module) -> list[torch.Tensor]:
    return [p for name, p in m.named_parameters() if name.startswith("weight_")]


def _lstm_flops(m: nn.Module, shape: tuple[int, ...]) -> int:
    # every weight matrix is applied once per time step and batch row
    steps = shape[0] * shape[1] if len(shape) == 3 else shape[0]
    return 2 * steps * sum(w.numel() for w in _lstm_weights(m))


LSTM = register(
    LayerKind(
        name="lstm",
        claims=lambda m: type(m) is nn.LSTM,
        # all weight matrices flattened: the budget counts every one of them
        dense_shape=lambda m: (sum(w.numel() for w in _lstm_weights(m)),),
        dense_flops=_lstm_flops,
        masked=_masked_lstm,
    )
)


# --- nn.Embedding --------------------------------------------------------------------------------


def _masked_embedding(module: nn.Module) -> nn.Module:
    from tedepr_fx.layers.embedding import MaskedEmbedding

    return MaskedEmbedding.from_embedding(module)


def _claims_embedding(m: nn.Module) -> bool:
    """``nn.Embedding`` and its subclasses that keep its forward: a subclass with its own
    (Hugging Face's learned positions with an offset, scaled word embeddings) computes more
    than a lookup, which a replacement would lose, so it is not a layer the rules can see."""
    return isinstance(m, nn.Embedding) and type(m).forward is nn.Embedding.forward


EMBEDDING = register(
    LayerKind(
        name="embedding",
        claims=_claims_embedding,
        dense_shape=_weight_shape,  # (num_embeddings, embedding_dim)
        dense_flops=lambda m, shape: 0,  # a lookup is a gather: no multiply-add
        masked=_masked_embedding,
    )
)
