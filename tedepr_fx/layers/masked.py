"""The fine-grained mask mechanism shared by every layer tedepr_fx builds.

A prunable tensor ``<name>`` (a dense ``weight`` or a factor such as ``core_1``)
carries a boolean buffer ``<name>_mask`` of the same shape in the *same* module.
``forward`` reads the tensor through :meth:`MaskedMixin.masked`, which selects its
kept entries (``torch.where``), so no optimizer, momentum or weight decay can revive
a pruned entry: its effective value is zero whatever the stored value becomes.

Because the masks are ordinary buffers they are saved in ``state_dict``, moved by
``.to()``, copied by ``deepcopy``, pickled by ``torch.save`` and broadcast by DDP.
Masks exist from construction (all ``True``), so a pruned model's state_dict
loads into a freshly transformed, not yet pruned one. A load that would revive
entries (a mask in the file keeps what the module prunes) or that writes nonzero
values into pruned entries without their mask (a dense copy, ``strict=False``)
loads as asked and says so with a :class:`RevivedWarning`.

:meth:`MaskedMixin.bake_masks` folds the masks into the tensors and removes them
(see :func:`tedepr_fx.bake`).

Every module in :mod:`tedepr_fx.layers` also answers the accounting questions
of :class:`Accounting`: dense, stored and kept weight counts, and FLOPs.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.layers.hf import WeightLayout, is_hf_conv1d


class RevivedWarning(UserWarning):
    """``load_state_dict`` revived pruned entries of a masked layer, or wrote values into them."""


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
    baked = False  # True once :meth:`bake_masks` folded the masks into the tensors

    def init_masks(self) -> None:
        module = cast(nn.Module, self)  # the mixin is only ever mixed into nn.Module subclasses
        for name in self.prunable:
            param: torch.Tensor = getattr(self, name)
            module.register_buffer(
                f"{name}_mask", torch.ones(param.shape, dtype=torch.bool, device=param.device)
            )

    def get_mask(self, name: str) -> torch.Tensor:
        """The mask buffer of ``name``; for a baked module, computed: its nonzero entries."""
        self._check_prunable(name)
        if self.baked:
            return cast(torch.Tensor, getattr(self, name)).detach() != 0
        mask: torch.Tensor = getattr(self, f"{name}_mask")
        return mask

    def mask_buffer(self, name: str) -> torch.Tensor | None:
        """The mask buffer of ``name``, or None once the module is baked."""
        return None if self.baked else self.get_mask(name)

    @torch.no_grad()
    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """Copy ``mask`` into the buffer of ``name`` (in place, so DDP and optimizers keep their references)."""
        if self.baked:
            raise ValueError(f"{type(self).__name__} is baked: its masks were folded into its tensors "
                             f"and removed, so the mask of {name!r} cannot be set")
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
        if self.baked:
            return param
        mask: torch.Tensor = getattr(self, f"{name}_mask")
        if mask.dtype == torch.bool:
            return torch.where(mask, param, param.new_zeros(()))
        return param * mask

    @torch.no_grad()
    def bake_masks(self) -> None:
        """Write every mask into its tensor and delete the mask buffers, in place.

        Pruned entries become exactly 0 (selected, so an ``inf`` or ``NaN`` stored there
        goes too) and :meth:`masked` returns the tensors as they are: same outputs, no
        mask buffers. Nothing keeps a baked entry at 0 any more: a baked module is for
        inference and export, not for more training.
        """
        if self.baked:
            return
        module = cast(nn.Module, self)
        for name in self.prunable:
            mask = self.get_mask(name)
            if mask.dtype != torch.bool:
                raise ValueError(f"{type(self).__name__}: the mask of {name!r} is {mask.dtype}, not bool "
                                 "(a scorer's differentiable mask); only a model's boolean masks can be baked")
            param: torch.Tensor = getattr(self, name)
            # .data, not copy_: the tensor takes the strides masked() gave, so every product
            # runs the same kernel on the same layout as before baking
            param.data = torch.where(mask, param, param.new_zeros(()))
            delattr(module, f"{name}_mask")
        self.baked = True

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """``nn.Module``'s load, then a :class:`RevivedWarning` for any pruned entry it revived."""
        revived = self._revived_by(state_dict, prefix)
        errors: list[str] = args[-1]  # nn.Module's signature ends with error_msgs
        before = len(errors)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
        if revived and len(errors) == before:
            warnings.warn(f"load_state_dict into {type(self).__name__} {prefix.rstrip('.') or '(root)'}: "
                          + "; ".join(revived), RevivedWarning, stacklevel=_caller_level())

    @torch.no_grad()
    def _revived_by(self, state_dict: dict[str, Any], prefix: str) -> list[str]:
        """What loading ``state_dict`` would do to this module's pruned entries, one line per tensor.

        A mask in the file that keeps entries this module prunes revives them; a tensor without
        its mask in the file (a dense copy) whose values are nonzero where this module prunes:
        those stay pruned (the mask is kept), but the caller probably meant to load a mask too.
        """
        if self.baked:
            return []
        lines: list[str] = []
        for name in self.prunable:
            current = self.get_mask(name)
            if current.dtype != torch.bool:
                continue
            loaded_mask = state_dict.get(f"{prefix}{name}_mask")
            value = state_dict.get(f"{prefix}{name}")
            if isinstance(loaded_mask, torch.Tensor) and loaded_mask.shape == current.shape:
                revived = int((loaded_mask.to(current.device, torch.bool) & ~current).sum())
                if revived:
                    lines.append(f"the mask of {name!r} keeps {revived} entries that were pruned "
                                 f"(kept {int(current.sum())} -> {int(loaded_mask.bool().sum())})")
            elif (isinstance(value, torch.Tensor) and loaded_mask is None and value.shape == current.shape
                  and not value.is_meta):
                written = int(((value.to(current.device) != 0) & ~current).sum())
                if written:
                    lines.append(f"{name!r} comes without its mask and writes {written} nonzero values "
                                 "into pruned entries; they stay pruned (the module's mask is kept)")
        return lines

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


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame, above the caller, outside this file and torch's
    ``nn.Module`` (whose ``load_state_dict`` recurses once per submodule): the user's call."""
    inside = {__file__, nn.modules.module.__file__}
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename in inside:
        frame, level = frame.f_back, level + 1
    return level


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
