"""``nn.LSTM`` whose weight matrices carry masks, for layers the rules only prune.

Parameter names, shapes and the call signature are those of ``nn.LSTM`` (so a dense
state_dict loads into it); every ``weight_ih_l{k}``, ``weight_hh_l{k}`` (and ``weight_hr_l{k}``
with ``proj_size``), of every layer and direction, is prunable with a ``<name>_mask`` buffer.
"""

from __future__ import annotations

import math
from typing import Any, overload

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from tedepr_fx.layers.masked import MaskedMixin


class MaskedLSTM(MaskedMixin, nn.LSTM):
    """``nn.LSTM`` whose forward runs on the masked weights (weight = weight * mask).

    >>> import torch
    >>> lstm = nn.LSTM(4, 8, num_layers=2, batch_first=True)
    >>> masked = MaskedLSTM.from_lstm(lstm)
    >>> x = torch.randn(3, 5, 4)
    >>> bool(torch.equal(masked(x)[0], lstm(x)[0]))
    True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # nn.LSTM's arguments
        super().__init__(*args, **kwargs)
        self._setup_masks()

    def _setup_masks(self) -> None:
        # an instance attribute: which weights exist depends on num_layers / bidirectional / proj_size
        self.prunable = tuple(n for n in self._flat_weights_names if n.startswith("weight_"))
        self.init_masks()

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> MaskedLSTM:
        """Wrap ``lstm``'s own parameters (shared, not copied) with all-True masks."""
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"MaskedLSTM.from_lstm needs an nn.LSTM; got {type(lstm).__name__}")
        ref = lstm.weight_ih_l0
        new = cls(
            lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, bias=lstm.bias,
            batch_first=lstm.batch_first, dropout=lstm.dropout, bidirectional=lstm.bidirectional,
            proj_size=lstm.proj_size, device="meta", dtype=ref.dtype,
        )
        for name in new._flat_weights_names:
            setattr(new, name, getattr(lstm, name))
        for name in new.prunable:
            delattr(new, f"{name}_mask")
        new.init_masks()
        new.train(lstm.training)
        return new

    @property
    def dense_params(self) -> int:
        return sum(getattr(self, n).numel() for n in self.prunable)

    @overload
    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None  # noqa: A002
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]: ...

    @overload
    def forward(
        self, input: PackedSequence, hx: tuple[torch.Tensor, torch.Tensor] | None = None  # noqa: A002
    ) -> tuple[PackedSequence, tuple[torch.Tensor, torch.Tensor]]: ...

    def forward(
        self, input: torch.Tensor | PackedSequence,  # noqa: A002 - nn.LSTM's own signature
        hx: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
        # nn.LSTM.forward hands self._flat_weights to the fused kernel: give it the masked
        # weights for this call only, so no graph outlives the call and deepcopy still works
        self._update_flat_weights()
        plain = self._flat_weights
        self._flat_weights = [
            self.masked(n) if n in self.prunable else w
            for n, w in zip(self._flat_weights_names, plain)
        ]
        self._masking = True
        try:
            return super().forward(input, hx)
        finally:
            self._masking = False
            self._flat_weights = plain

    def _update_flat_weights(self) -> None:
        if not getattr(self, "_masking", False):
            super()._update_flat_weights()

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """2 x multiply-adds of the gate products: every weight matrix once per step and sequence.

        Per step, layer and direction the LSTM equations (Hochreiter and Schmidhuber, 1997, as
        in ``nn.LSTM``'s documentation) multiply the input by ``W_ih`` ``(4H, in)``, the state by
        ``W_hh`` ``(4H, H)`` (and by ``W_hr`` with ``proj_size``); elementwise gate arithmetic
        and biases are not counted. ``input_shape`` is ``(L, N, in)``, ``(N, L, in)`` or ``(L, in)``.
        """
        if input_shape[-1] != self.input_size:
            raise ValueError(f"input has {input_shape[-1]} features, the LSTM expects {self.input_size}")
        steps = math.prod(input_shape[:-1])
        return 2 * steps * self.dense_params

    def to_dense(self) -> torch.Tensor:
        """The masked weight matrices, flattened and concatenated in ``nn.LSTM``'s parameter order.

        An LSTM has no single weight; this is the flat layout the layer registry counts its
        dense weights in. Use :meth:`dense_weights` for the matrices by name.
        """
        return torch.cat([w.reshape(-1) for w in self.dense_weights().values()])

    def dense_weights(self) -> dict[str, torch.Tensor]:
        """Effective (masked) weight matrices by parameter name."""
        with torch.no_grad():
            return {n: self.masked(n).detach() for n in self.prunable}
