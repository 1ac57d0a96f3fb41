"""An LSTM sequence classifier (Hochreiter & Schmidhuber 1997), the paper's UCF11-style model.

References
----------
.. [1] S. Hochreiter and J. Schmidhuber, "Long short-term memory", Neural
   Computation 9(8), 1997.
"""

from __future__ import annotations

import torch
from torch import nn

from tedepr_fx.models.lenet import _param_device


class LSTMClassifier(nn.Module):
    """``lstm`` (nn.LSTM) followed by a linear ``fc`` on the last time step's output [1]_.

    With ``batch_first=True`` the input is ``(N, T, input_size)``; any input whose
    trailing size is a multiple of ``input_size`` is read as such a sequence, so an
    image ``(N, 1, H, W)`` with ``input_size=W`` is the sequence of its H rows
    (8x8 digits: T=8, input 8). With ``batch_first=False`` the input is
    ``(T, N, input_size)`` and is not reshaped.

    Parameters
    ----------
    input_size, hidden_size, num_layers
        As for ``nn.LSTM``.
    num_classes
        Number of output logits.
    batch_first
        As for ``nn.LSTM``.
    seq_len
        Sequence length of :meth:`example_input` (the model accepts any length).

    References
    ----------
    .. [1] S. Hochreiter and J. Schmidhuber, "Long short-term memory", Neural
       Computation 9(8), 1997.
    """

    def __init__(self, input_size: int = 64, hidden_size: int = 128, num_layers: int = 1,
                 num_classes: int = 10, batch_first: bool = True, seq_len: int = 8):
        super().__init__()
        self.input_size = input_size
        self.batch_first = batch_first
        self.seq_len = seq_len
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=batch_first)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor
        if self.batch_first:
            x = x.reshape(x.shape[0], -1, self.input_size)
            logits = self.fc(self.lstm(x)[0][:, -1])
        else:
            logits = self.fc(self.lstm(x)[0][-1])
        return logits

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input of shape ``(batch, seq_len, input_size)`` (or ``(seq_len, batch, ...)``)."""
        shape = (batch, self.seq_len) if self.batch_first else (self.seq_len, batch)
        return torch.randn(*shape, self.input_size, device=_param_device(self))
