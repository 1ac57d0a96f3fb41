"""Loss presets for scoring: what ``loss: <name>`` in the rules (or ``transform(loss_fn="<name>")``) means.

Each preset is ``loss(logits, targets) -> scalar`` over the tensor ``output_fn`` gives
(the logits). Labels equal to ``-100`` are ignored, as Hugging Face data collators
mark padding and unmasked tokens.

* ``classification``: cross-entropy of ``(batch, classes)`` logits against ``(batch,)``
  labels (the default when nothing is said);
* ``causal_lm``: next-token cross-entropy: the logits at position ``t`` predict the label
  at ``t + 1`` (``(batch, seq, vocab)`` logits, ``(batch, seq)`` labels);
* ``masked_lm``: cross-entropy at every labelled position (``(batch, seq, vocab)``,
  ``(batch, seq)``; positions labelled ``-100`` do not count).

>>> import torch
>>> logits, labels = torch.zeros(2, 5, 7), torch.randint(0, 7, (2, 5))
>>> round(float(LOSSES["causal_lm"](logits, labels)), 4)  # uniform logits: log(7)
1.9459
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from tedepr_fx.errors import DataError
from tedepr_fx.names import LOSS_NAMES

IGNORE_INDEX = -100
LossFn = Callable[[Tensor, Any], Tensor]


def classification(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``(batch, classes)`` logits (or ``(batch, classes, ...)``) against labels."""
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def causal_lm(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy: ``logits[:, :-1]`` against ``labels[:, 1:]``."""
    _check_sequence(logits, labels, "causal_lm")
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def masked_lm(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy at every position whose label is not ``-100``."""
    _check_sequence(logits, labels, "masked_lm")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def _check_sequence(logits: Tensor, labels: Tensor, name: str) -> None:
    if logits.dim() != 3 or labels.dim() != 2 or tuple(logits.shape[:2]) != tuple(labels.shape):
        raise DataError(f"loss {name!r} takes (batch, seq, vocab) logits and (batch, seq) labels; got "
                        f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}")


LOSSES: dict[str, LossFn] = {"classification": classification, "causal_lm": causal_lm, "masked_lm": masked_lm}


def resolve_loss(loss: str | LossFn | None, rules_loss: str | None) -> LossFn | None:
    """The loss a scoring run uses: ``loss`` (a callable or a preset name), else the rules' preset."""
    chosen = loss if loss is not None else rules_loss
    if chosen is None or callable(chosen):
        return chosen
    if chosen not in LOSSES:
        raise DataError(f"unknown loss {chosen!r}; presets: {', '.join(LOSS_NAMES)}, or pass a callable")
    return LOSSES[chosen]
