"""A small, plain training loop: enough to train the zoo's models in the demo and the benchmarks.

Cross-entropy, one optimizer, mean loss per epoch; :func:`evaluate` gives top-1
accuracy. Masks of pruned layers need nothing here: they are applied in each
layer's forward (see :mod:`tedepr_fx.layers.masked`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tedepr_fx.errors import DataError

OPTIMIZERS = ("sgd", "adam", "adamw")


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _make_optimizer(model: nn.Module, name: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def train(model: nn.Module, train_loader: Iterable[Sequence[torch.Tensor]], *, epochs: int = 1,
          lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
          optimizer: str = "sgd", progress: bool = True, desc: str = "train") -> list[float]:
    """Train ``model`` in place with cross-entropy on ``(inputs, labels)`` batches.

    Parameters
    ----------
    model
        Returns logits ``(N, classes)``; put in train mode for the duration.
    train_loader
        Re-iterable source of ``(inputs, int64 labels)`` batches (a DataLoader).
    epochs
        Passes over ``train_loader``.
    lr, momentum, weight_decay
        Optimizer settings (``momentum`` only applies to SGD).
    optimizer
        ``"sgd"``, ``"adam"`` or ``"adamw"``.
    progress
        Show a tqdm bar (only when stderr is a terminal).
    desc
        Label of the progress bar.

    Returns
    -------
    list of float
        Mean training loss of each epoch (weighted by batch size).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
    device = _device_of(model)
    was_training = model.training
    model.train()
    show = progress and sys.stderr.isatty()
    losses: list[float] = []
    try:
        for epoch in range(epochs):
            total, seen = 0.0, 0
            bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not show,
                       leave=False)
            for inputs, labels in bar:
                inputs, labels = inputs.to(device), labels.to(device)
                loss = F.cross_entropy(model(inputs), labels)
                opt.zero_grad(set_to_none=True)
                # torch's Tensor.backward is unannotated in torch/_tensor.py
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                total += loss.item() * len(labels)
                seen += len(labels)
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
            if seen == 0:
                raise DataError("train_loader yielded no samples")
            losses.append(total / seen)
    finally:
        model.train(was_training)
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Sequence[torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` on ``(inputs, labels)`` batches, in [0, 1], computed in eval mode.

    The model's train / eval mode is restored afterwards.
    """
    device = _device_of(model)
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    try:
        for inputs, labels in loader:
            labels = labels.to(device)
            predicted = model(inputs.to(device)).argmax(dim=1)
            correct += int((predicted == labels).sum())
            seen += len(labels)
    finally:
        model.train(was_training)
    if seen == 0:
        raise DataError("evaluate: loader yielded no samples")
    return correct / seen


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter entries of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
