"""Masks hold under training for every masked layer; MaskedLSTM behaves as nn.LSTM."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from tedepr_fx.layers.masked import MaskedConv2d, MaskedLinear
from tedepr_fx.layers.masked_lstm import MaskedLSTM
from tedepr_fx.layers.tucker import Tucker2Conv2d, TuckerLinear


def _layers():
    return {
        "tucker_linear": (lambda: TuckerLinear.from_linear(nn.Linear(12, 10), [6, 5]), (8, 12)),
        "tucker_conv": (lambda: Tucker2Conv2d.from_conv(nn.Conv2d(4, 6, 3, padding=1), [5, 3]),
                        (2, 4, 6, 6)),
        "masked_linear": (lambda: MaskedLinear.from_linear(nn.Linear(12, 10)), (8, 12)),
        "masked_conv": (lambda: MaskedConv2d.from_conv(nn.Conv2d(4, 6, 3, padding=1)), (2, 4, 6, 6)),
        "masked_lstm": (lambda: MaskedLSTM.from_lstm(nn.LSTM(5, 6, num_layers=2, bidirectional=True)),
                        (7, 3, 5)),
    }


def _output(layer, x):
    y = layer(x)
    return y[0] if isinstance(y, tuple) else y


def _reference_forward(layer, x):
    """The same layer with the pruned entries zeroed in a copy, run without masks."""
    plain = copy.deepcopy(layer)
    with torch.no_grad():
        for name in plain.prunable:
            getattr(plain, name).mul_(plain.get_mask(name))
            plain.get_mask(name).fill_(True)
    return _output(plain, x)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("kind", list(_layers()))
def test_pruned_entries_stay_zero_in_effect_after_100_steps(kind, optimizer):
    torch.manual_seed(0)
    make, shape = _layers()[kind]
    layer = make()
    masks = {}
    for name in layer.prunable:
        masks[name] = torch.rand(getattr(layer, name).shape) > 0.6
        layer.set_mask(name, masks[name])
    if optimizer == "sgd":
        opt = torch.optim.SGD(layer.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    else:
        opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=1e-2)
    x = torch.randn(*shape)
    for _ in range(100):
        opt.zero_grad()
        (_output(layer, x) ** 2).mean().backward()
        opt.step()
    for name, mask in masks.items():
        raw = getattr(layer, name).detach()
        assert torch.all(layer.masked(name)[~mask] == 0), name
        assert torch.all(raw[~mask] != 0), name  # weight decay alone never zeroes them: masks do
        assert torch.equal(layer.get_mask(name), mask)
    with torch.no_grad():
        torch.testing.assert_close(_output(layer, x), _reference_forward(layer, x))
    assert layer.kept_params() == sum(int(m.sum()) for m in masks.values())


LSTM_CONFIGS = [
    dict(input_size=5, hidden_size=7),
    dict(input_size=5, hidden_size=7, batch_first=True, num_layers=2),
    dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True),
    dict(input_size=5, hidden_size=7, batch_first=True, bidirectional=True, proj_size=3),
    dict(input_size=5, hidden_size=7, bias=False),
]


@pytest.mark.parametrize("config", LSTM_CONFIGS)
@pytest.mark.parametrize("with_hx", [False, True])
def test_masked_lstm_with_all_true_masks_is_nn_lstm(config, with_hx):
    torch.manual_seed(0)
    dense = nn.LSTM(**config)
    layer = MaskedLSTM.from_lstm(dense)
    batch, steps = 3, 4
    x = torch.randn(batch, steps, 5) if config.get("batch_first") else torch.randn(steps, batch, 5)
    directions = 2 if config.get("bidirectional") else 1
    layers = config.get("num_layers", 1)
    hx = None
    if with_hx:
        real = config.get("proj_size", 0) or 7
        hx = (torch.randn(layers * directions, batch, real), torch.randn(layers * directions, batch, 7))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_dense, (h_dense, c_dense) = dense(x1, hx)
    y_layer, (h_layer, c_layer) = layer(x2, hx)
    torch.testing.assert_close(y_layer, y_dense, rtol=0, atol=0)
    torch.testing.assert_close(h_layer, h_dense, rtol=0, atol=0)
    torch.testing.assert_close(c_layer, c_dense, rtol=0, atol=0)
    dense_grads = torch.autograd.grad(y_dense.sum(), [x1, *dense.parameters()])
    layer_grads = torch.autograd.grad(y_layer.sum(), [x2, *layer.parameters()])
    for got, want in zip(layer_grads, dense_grads):
        torch.testing.assert_close(got, want)


def test_masked_lstm_unbatched_and_packed_inputs():
    torch.manual_seed(0)
    dense = nn.LSTM(5, 6, batch_first=True)
    layer = MaskedLSTM.from_lstm(dense)
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer(x)[0], dense(x)[0])
    packed = pack_padded_sequence(torch.randn(3, 4, 5), torch.tensor([4, 2, 1]), batch_first=True)
    torch.testing.assert_close(layer(packed)[0].data, dense(packed)[0].data)


def test_masked_lstm_mask_changes_the_output_like_zeroed_weights():
    torch.manual_seed(0)
    layer = MaskedLSTM.from_lstm(nn.LSTM(5, 6, num_layers=2))
    x = torch.randn(4, 2, 5)
    mask = torch.rand(layer.weight_hh_l1.shape) > 0.5
    layer.set_mask("weight_hh_l1", mask)
    zeroed = nn.LSTM(5, 6, num_layers=2)
    zeroed.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.endswith("_mask")})
    with torch.no_grad():
        zeroed.weight_hh_l1.mul_(mask)
    torch.testing.assert_close(layer(x)[0], zeroed(x)[0])


def test_masked_lstm_accounting_copy_and_state_dict():
    dense = nn.LSTM(5, 6, num_layers=2, bidirectional=True)
    layer = MaskedLSTM.from_lstm(dense)
    weights = [p for n, p in dense.named_parameters() if n.startswith("weight_")]
    assert layer.dense_params == sum(w.numel() for w in weights) == layer.stored_params()
    assert layer.flops((7, 3, 5)) == 2 * 7 * 3 * layer.dense_params
    assert torch.equal(layer.to_dense(), torch.cat([w.detach().reshape(-1) for w in weights]))
    assert set(dense.state_dict()) <= set(layer.state_dict())
    layer.set_mask("weight_ih_l0", torch.zeros_like(layer.weight_ih_l0_mask))
    x = torch.randn(3, 2, 5)
    torch.testing.assert_close(copy.deepcopy(layer)(x)[0], layer(x)[0])
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = MaskedLSTM(5, 6, num_layers=2, bidirectional=True)
    fresh.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(fresh(x)[0], layer(x)[0])
    assert fresh.kept_params() == layer.dense_params - layer.weight_ih_l0.numel()


def test_masked_dense_layers_match_their_originals():
    torch.manual_seed(0)
    lin, conv = nn.Linear(6, 4), nn.Conv2d(3, 5, 3, stride=2, padding=1, padding_mode="reflect")
    x, img = torch.randn(2, 6), torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(MaskedLinear.from_linear(lin)(x), lin(x))
    torch.testing.assert_close(MaskedConv2d.from_conv(conv)(img), conv(img))
    masked = MaskedConv2d.from_conv(conv)
    mask = torch.rand(conv.weight.shape) > 0.5
    masked.set_mask("weight", mask)
    expected = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="reflect"), conv.weight * mask, conv.bias, 2)
    torch.testing.assert_close(masked(img), expected)
    assert masked.flops((2, 3, 7, 7)) == 2 * 2 * 4 * 4 * conv.weight.numel()
