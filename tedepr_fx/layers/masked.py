"""The fine-grained mask mechanism shared by every layer tedepr_fx builds.

A prunable tensor ``<name>`` (a dense ``weight`` or a factor such as ``core_1``)
carries a boolean buffer ``<name>_mask`` of the same shape in the *same* module.
``forward`` reads the tensor through :meth:`MaskedMixin.masked`, which multiplies
it by its mask, so no optimizer, momentum or weight decay can revive a pruned
entry: its effective value is zero whatever the stored value becomes.

Because the masks are ordinary buffers they are saved in ``state_dict``, moved by
``.to()``, copied by ``deepcopy``, pickled by ``torch.save`` and broadcast by DDP.
Masks exist from construction (all ``True``), so a pruned model's state_dict
loads into a freshly transformed, not yet pruned one.

Every module in :mod:`tedepr_fx.layers` also answers the accounting questions
of :class:`Accounting`: dense, stored and kept weight counts, and FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.layers.hf import WeightLayout, is_hf_conv1d


@runtime_checkable
class Accounting(Protocol):
    """What every tedepr_fx layer reports about itself.

    FLOPs count a multiply-add as 2 operations, for one forward pass over an
    input of the given shape (batch included); biases and masks are not counted.
    Weight counts exclude biases.
    """

    dense_params: int  # weights of the original dense layer

    def stored_params(self) -> int: ...  # weight entries the module stores (factors)

    def kept_params(self) -> int: ...  # stored entries whose mask is True

    def flops(self, input_shape: tuple[int, ...]) -> int: ...

    def to_dense(self) -> torch.Tensor: ...  # effective weight, original layout


PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]  # nn.Conv2d's padding_mode
Pair = tuple[int, int]  # a 2-d convolution's kernel_size, stride, dilation (torch types them tuple[int, ...])


class _HasDense(Protocol):
    def to_dense(self) -> torch.Tensor: ...


class MaskedMixin:
    """Mixin for modules whose tensors named in ``prunable`` carry boolean masks.

    Subclasses set ``prunable`` (a tuple of parameter names) and call
    :meth:`init_masks` once their parameters exist.
    """

    prunable: tuple[str, ...] = ()

    def init_masks(self) -> None:
        module = cast(nn.Module, self)  # the mixin is only ever mixed into nn.Module subclasses
        for name in self.prunable:
            param: torch.Tensor = getattr(self, name)
            module.register_buffer(
                f"{name}_mask", torch.ones(param.shape, dtype=torch.bool, device=param.device)
            )

    def get_mask(self, name: str) -> torch.Tensor:
        self._check_prunable(name)
        mask: torch.Tensor = getattr(self, f"{name}_mask")
        return mask

    @torch.no_grad()
    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """Copy ``mask`` into the buffer of ``name`` (in place, so DDP and optimizers keep their references)."""
        current = self.get_mask(name)
        if tuple(mask.shape) != tuple(current.shape):
            raise ValueError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, expected {tuple(current.shape)}"
            )
        current.copy_(mask.to(dtype=torch.bool, device=current.device))

    def masked(self, name: str) -> torch.Tensor:
        """The effective value of a prunable tensor: its kept entries, zeros elsewhere.

        A boolean mask selects (``torch.where``), so an ``inf`` or ``NaN`` in a pruned entry
        never reaches the output (``inf * 0`` would); a float mask, which the scorers put in
        the buffer's place to differentiate through it, multiplies.
        """
        param: torch.Tensor = getattr(self, name)
        mask: torch.Tensor = getattr(self, f"{name}_mask")
        if mask.dtype == torch.bool:
            return torch.where(mask, param, param.new_zeros(()))
        return param * mask

    def stored_params(self) -> int:
        return sum(cast(torch.Tensor, getattr(self, name)).numel() for name in self.prunable)

    def kept_params(self) -> int:
        return sum(int(self.get_mask(name).sum()) for name in self.prunable)

    def _check_prunable(self, name: str) -> None:
        if name not in self.prunable:
            raise KeyError(f"{type(self).__name__} has no prunable tensor {name!r}; it has {self.prunable}")


class DenseWeightView:
    """Gives a factorized layer a read-only ``weight``: its effective dense weight, detached.

    Code written for dense layers reads ``layer.weight`` for its dtype, device or shape, and
    torch's ``TransformerEncoderLayer`` reads ``linear1.weight`` to decide on its fused
    inference path; the factors stay the trainable tensors.
    """

    @property
    def weight(self: _HasDense) -> torch.Tensor:
        return self.to_dense()


def iter_masked(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Yield ``(qualified_module_name, module, tensor_name)`` for every prunable tensor of ``model``.

    Every ``module`` yielded is an ``nn.Module`` that is also a :class:`MaskedMixin`.
    """
    for qualname, module in model.named_modules():
        if isinstance(module, MaskedMixin):
            for name in module.prunable:
                yield qualname, cast(nn.Module, module), name  # narrowed to MaskedMixin; still the Module


class _MaskedDenseWeight(MaskedMixin):
    """A dense layer whose one prunable tensor is its ``weight``, stored in the original layout."""

    prunable = ("weight",)
    weight: torch.Tensor  # a registered nn.Parameter of the dense layer this is mixed into

    @property
    def dense_params(self) -> int:
        return self.weight.numel()

    def to_dense(self) -> torch.Tensor:
        return self.masked("weight").detach()


def linear_flops(input_shape: tuple[int, ...], in_features: int, out_features: int) -> int:
    """2 x multiply-adds of a linear map applied to every row of an input of this shape."""
    rows = 1
    for s in input_shape[:-1]:
        rows *= s
    return 2 * rows * in_features * out_features


class MaskedLinear(_MaskedDenseWeight, nn.Linear):
    """``nn.Linear`` whose weight carries a mask; parameter names and layout are unchanged."""

    weight_layout: WeightLayout = "linear"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # nn.Linear's arguments
        super().__init__(*args, **kwargs)
        self.init_masks()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> MaskedLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.init_masks()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked("weight"), self.bias)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return linear_flops(input_shape, self.in_features, self.out_features)


class MaskedConv2d(_MaskedDenseWeight, nn.Conv2d):
    """``nn.Conv2d`` whose weight carries a mask; parameter names and layout are unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # nn.Conv2d's arguments
        super().__init__(*args, **kwargs)
        self.init_masks()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> MaskedConv2d:
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta",
        )
        new.weight = conv.weight
        new.bias = conv.bias
        new.init_masks()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self._conv_forward(x, self.masked("weight"), self.bias)  # torch: returns unannotated
        return y

    def flops(self, input_shape: tuple[int, ...]) -> int:
        out = conv2d_output_hw(input_shape[-2:], self.kernel_size, self.stride, self.padding, self.dilation)
        batch = input_shape[0] if len(input_shape) == 4 else 1
        return 2 * batch * out[0] * out[1] * self.weight.numel()


def conv2d_output_hw(
    hw: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
    padding: str | Sequence[int], dilation: Sequence[int],
) -> tuple[int, int]:
    """Spatial output size of a 2-d convolution (``padding`` may be ``'same'``/``'valid'``)."""
    out: list[int] = []
    for i in range(2):
        if padding == "same":
            out.append((hw[i] + stride[i] - 1) // stride[i])
            continue
        # past 'same' and 'valid', padding is the per-dimension amounts
        pad = 0 if padding == "valid" else cast("Sequence[int]", padding)[i]
        out.append((hw[i] + 2 * pad - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1)
    return out[0], out[1]


class MaskedTransposedLinear(_MaskedDenseWeight, nn.Module):
    """A linear map stored as (in, out), like Hugging Face's ``Conv1D``, whose weight carries a mask.

    Replaces ``transformers.pytorch_utils.Conv1D`` for ``action: prune`` with the same
    parameter names (``weight``, ``bias``) and layout (``weight_layout = "conv1d"``, see
    :mod:`tedepr_fx.layers.hf`), so its state_dict still loads.
    """

    weight_layout: WeightLayout = "conv1d"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.nf = out_features  # the attribute name Hugging Face code reads
        self.weight = nn.Parameter(torch.empty(in_features, out_features, device=device, dtype=dtype))
        self.bias = (
            nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        )
        self.init_masks()

    @classmethod
    def from_hf_conv1d(cls, conv1d: nn.Module) -> MaskedTransposedLinear:
        """Wrap a Hugging Face ``Conv1D``'s own parameters (shared, not copied) with all-True masks."""
        if not is_hf_conv1d(conv1d):
            raise TypeError(f"MaskedTransposedLinear.from_hf_conv1d needs a Hugging Face Conv1D; "
                            f"got {type(conv1d).__name__}")
        # HF Conv1D registers both as nn.Parameter (is_hf_conv1d checked the weight)
        weight = cast(nn.Parameter, conv1d.weight)
        bias = cast("nn.Parameter | None", conv1d.bias)
        nx, nf = weight.shape
        new = cls(nx, nf, bias=bias is not None, device="meta")
        new.weight = weight
        new.bias = bias
        new.init_masks()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.masked("weight")
        return y if self.bias is None else y + self.bias

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return linear_flops(input_shape, self.in_features, self.out_features)
