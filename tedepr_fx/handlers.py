"""The registry of layer kinds: how to read, rebuild and count each kind of layer.

Supporting a new kind of layer is one :class:`LayerKind` added with
:func:`register`; the passes only ever talk to this registry.

Each kind knows

* which modules it claims (``claims``) and the type names rules can select it by;
* the shape of its dense weight (``dense_shape``), so budgets are counted
  against the original weights;
* how to build its factorized form for each supported format and its masked
  form for ``action: prune`` (``builders``);
* the FLOPs of the dense layer for an input shape (``dense_flops``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from tedepr_fx.layers.masked import MaskedMixin, conv2d_output_hw, linear_flops

# builder(module, rank, modes, init) -> new module; for "prune" rank/modes are None
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class LayerKind:
    """One kind of weight-bearing layer and everything the passes need to know about it."""

    name: str
    claims: Callable[[nn.Module], bool]
    dense_shape: Callable[[nn.Module], tuple[int, ...]]
    dense_flops: Callable[[nn.Module, tuple[int, ...]], int]
    builders: dict[str, Builder] = field(default_factory=dict)  # "tt" | "tucker" | "prune"
    # names a rule's `type:` can use besides the class names of the module's MRO
    aliases: tuple[str, ...] = ()

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(f for f in self.builders if f != "prune")

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


# --- nn.Linear -----------------------------------------------------------------------------------


def _tt_linear(module, rank, modes, init):
    from tedepr_fx.layers.tt import TTLinear

    return TTLinear.from_linear(module, rank, modes=modes, init=init)


def _tucker_linear(module, rank, modes, init):
    from tedepr_fx.layers.tucker import TuckerLinear

    return TuckerLinear.from_linear(module, rank, init=init)


def _masked_linear(module, rank=None, modes=None, init=None):
    from tedepr_fx.layers.masked import MaskedLinear

    return MaskedLinear.from_linear(module)


LINEAR = register(
    LayerKind(
        name="linear",
        claims=lambda m: isinstance(m, nn.Linear),
        dense_shape=lambda m: tuple(m.weight.shape),
        dense_flops=lambda m, shape: linear_flops(shape, m.in_features, m.out_features),
        builders={"tt": _tt_linear, "tucker": _tucker_linear, "prune": _masked_linear},
    )
)


# --- Hugging Face Conv1D (a linear layer whose weight is stored transposed) ------------------------


def _is_hf_conv1d(module: nn.Module) -> bool:
    cls = type(module)
    return (
        cls.__name__ == "Conv1D"
        and cls.__module__.startswith("transformers")
        and hasattr(module, "nf")
        and getattr(module, "weight", None) is not None
        and module.weight.dim() == 2
    )


def _masked_conv1d(module, rank=None, modes=None, init=None):
    from tedepr_fx.layers.masked import MaskedTransposedLinear

    return MaskedTransposedLinear.from_hf_conv1d(module)


HF_CONV1D = register(
    LayerKind(
        name="hf_conv1d",
        claims=_is_hf_conv1d,
        dense_shape=lambda m: tuple(m.weight.shape),  # (in, out)
        dense_flops=lambda m, shape: linear_flops(shape, *m.weight.shape),
        builders={"tt": _tt_linear, "tucker": _tucker_linear, "prune": _masked_conv1d},
    )
)


# --- nn.Conv2d -----------------------------------------------------------------------------------


def _tt_conv(module, rank, modes, init):
    from tedepr_fx.layers.tt import TTConv2d

    return TTConv2d.from_conv(module, rank, modes=modes, init=init)


def _tucker_conv(module, rank, modes, init):
    from tedepr_fx.layers.tucker import Tucker2Conv2d

    return Tucker2Conv2d.from_conv(module, rank, init=init)


def _masked_conv(module, rank=None, modes=None, init=None):
    from tedepr_fx.layers.masked import MaskedConv2d

    return MaskedConv2d.from_conv(module)


def _conv_flops(m: nn.Conv2d, shape: tuple[int, ...]) -> int:
    out_h, out_w = conv2d_output_hw(shape[-2:], m.kernel_size, m.stride, m.padding, m.dilation)
    batch = shape[0] if len(shape) == 4 else 1
    return 2 * batch * out_h * out_w * m.weight.numel()


CONV2D = register(
    LayerKind(
        name="conv2d",
        claims=lambda m: isinstance(m, nn.Conv2d),
        dense_shape=lambda m: tuple(m.weight.shape),
        dense_flops=_conv_flops,
        builders={"tt": _tt_conv, "tucker": _tucker_conv, "prune": _masked_conv},
    )
)


# --- nn.LSTM -------------------------------------------------------------------------------------


def _tt_lstm(module, rank, modes, init):
    from tedepr_fx.layers.tt_lstm import TTLSTM

    return TTLSTM.from_lstm(module, rank, modes=modes, init=init)


def _masked_lstm(module, rank=None, modes=None, init=None):
    from tedepr_fx.layers.masked_lstm import MaskedLSTM

    return MaskedLSTM.from_lstm(module)


def _lstm_weights(m: nn.LSTM) -> list[torch.Tensor]:
    return [p for name, p in m.named_parameters() if name.startswith("weight_")]


def _lstm_flops(m: nn.LSTM, shape: tuple[int, ...]) -> int:
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
        builders={"tt": _tt_lstm, "prune": _masked_lstm},
    )
)
