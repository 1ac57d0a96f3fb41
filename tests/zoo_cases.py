"""Transformed models shared by tests/test_bake.py and tests/test_export.py: every zoo family
under its shipped policy, and a tiny Hugging Face BERT under transformer.yaml (no download)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

import tedepr_fx
from tedepr_fx import models, policies

# family -> (small model, its shipped policy)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "lenet": (lambda: models.LeNet300100(in_features=64), "lenet"),
    "lenet5": (lambda: models.LeNet5(), "lenet5"),
    "vgg": (lambda: models.VGG11(width=0.375), "vgg"),  # the suite's width: vgg.yaml factorizes its wide convs
    "resnet": (lambda: models.ResNet20(width=4), "resnet"),
    "vit": (lambda: models.ViT(dim=32, depth=1, heads=4, mlp_dim=64), "transformer"),
    "lstm": (lambda: models.LSTMClassifier(input_size=8, hidden_size=16), "lstm"),
}


def quiet_transform(model: nn.Module, policy: str, x: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no data: the policy's data-free scorer, said in a warning
        return tedepr_fx.transform(model, policies.path(policy), example_inputs=(x,), seed=0, verbose=False)


def transformed(family: str, batch: int = 4) -> tuple[nn.Module, torch.Tensor]:
    """The family's small model transformed by its shipped policy (eval mode), and an input."""
    torch.manual_seed(0)
    build, policy = FAMILIES[family]
    model = build().eval()
    x = model.example_input(batch)  # type: ignore[operator]
    return quiet_transform(model, policy, x).eval(), x


def tiny_bert() -> nn.Module:
    transformers = __import__("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.BertModel(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100))


def transformed_bert() -> tuple[nn.Module, torch.Tensor]:
    """A tiny BERT (from config) transformed by transformer.yaml (eval mode), and token ids."""
    torch.manual_seed(0)
    model = tiny_bert().eval()
    x = torch.randint(0, 100, (2, 7))
    return quiet_transform(model, "transformer", x).eval(), x


class Mixed(nn.Module):
    """A model for the layer kinds the zoo policies do not build: TT and TR convolutions, a TR
    linear, TT, TR and masked embeddings (one with a padding index), a masked 2-layer LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(60, 16)
        self.pos = nn.Embedding(24, 16, padding_idx=0)
        self.typ = nn.Embedding(6, 16)
        self.lstm = nn.LSTM(16, 16, num_layers=2, batch_first=True)
        self.conv_tt = nn.Conv2d(4, 8, 3, padding=1)
        self.conv_tr = nn.Conv2d(8, 8, 3, stride=2, bias=False)
        self.head = nn.Linear(16 + 8 * 3 * 3, 12)

    def forward(self, ids: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        seq = self.tok(ids) + self.pos(ids % 24) + self.typ(ids % 6)
        h = self.lstm(seq)[0][:, -1]
        z = self.conv_tr(torch.relu(self.conv_tt(img))).flatten(1)
        return self.head(torch.cat([h, z], dim=1))


def _factorize(name: str, fmt: str, rank: int) -> dict[str, object]:
    return {"name": name, "match": {"name": name}, "action": "factorize", "factorize": {"format": fmt, "rank": rank}}


MIXED_RULES = {
    "version": 1,
    "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.6}},
    "rules": [
        _factorize("tok", "tt", 4), _factorize("pos", "tr", 2),
        {"name": "typ", "match": {"name": "typ"}, "action": "prune"},
        {"name": "lstm", "match": {"name": "lstm"}, "action": "prune"},
        _factorize("conv_tt", "tt", 3), _factorize("conv_tr", "tr", 2), _factorize("head", "tr", 2),
    ],
}

Inputs = tuple[torch.Tensor, ...]


def mixed() -> tuple[nn.Module, Inputs]:
    """:class:`Mixed` transformed by :data:`MIXED_RULES` (eval mode), and its two inputs."""
    torch.manual_seed(0)
    x = (torch.randint(0, 60, (3, 5)), torch.randn(3, 4, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tedepr_fx.transform(Mixed().eval(), MIXED_RULES, example_inputs=x, seed=0, verbose=False), x


def _one(pair: tuple[nn.Module, torch.Tensor]) -> tuple[nn.Module, Inputs]:
    return pair[0], (pair[1],)


# case -> a transformed model (eval mode) and its inputs: every family, the mixed kinds, BERT
CASES: dict[str, Callable[[], tuple[nn.Module, Inputs]]] = {
    **{f: (lambda f=f: _one(transformed(f))) for f in FAMILIES},  # type: ignore[misc]
    "mixed": mixed,
    "bert": lambda: _one(transformed_bert()),
}


def output(model: nn.Module, x: Inputs) -> torch.Tensor:
    """The model's output as one tensor (a Hugging Face output: every field, flattened)."""
    return flat_output(model(*x))


def flat_output(y: object) -> torch.Tensor:
    if hasattr(y, "last_hidden_state"):
        return torch.cat([y.last_hidden_state.flatten(), y.pooler_output.flatten()])
    assert isinstance(y, torch.Tensor)
    return y
