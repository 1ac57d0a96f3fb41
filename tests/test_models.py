"""The model zoo: shapes, gradients, layer names the rule files rely on, fx tracing, ViT-B/16 size."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from tedepr_fx.models import (
    FACTORIES,
    ConvFunctional,
    FunctionalMLP,
    LeNet5,
    LeNet300100,
    LSTMClassifier,
    ResNet20,
    TinyTransformer,
    ViT,
    vit_b16,
)

SMALL = sorted(name for name in FACTORIES if name != "vit_b16")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", SMALL)
def test_forward_shape_and_backward(name):
    torch.manual_seed(0)
    model = FACTORIES[name]()
    x = model.example_input(3)
    out = model(x)
    assert out.shape == (3, 10)
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", SMALL)
def test_deterministic_given_seed(name):
    torch.manual_seed(3)
    a = FACTORIES[name]().state_dict()
    torch.manual_seed(3)
    b = FACTORIES[name]().state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", SMALL)
def test_symbolic_trace_matches_eager(name):
    torch.manual_seed(0)
    model = FACTORIES[name]().eval()
    x = model.example_input(2)
    gm = fx.symbolic_trace(model)
    torch.testing.assert_close(gm(x), model(x))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factories_load_by_module_path(name):
    module, _, attr = f"tedepr_fx.models:{name}".partition(":")
    assert getattr(importlib.import_module(module), attr) is FACTORIES[name]


def test_vit_b16_has_86m_parameters_on_meta():
    with torch.device("meta"):
        model = vit_b16()
    n = sum(p.numel() for p in model.parameters())
    assert 85_000_000 <= n <= 87_000_000
    assert model.example_input(1).shape == (1, 3, 224, 224)
    assert len(model.encoder.layers) == 12
    assert model.encoder.layers[0].self_attn.num_heads == 12


def _names(model: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules()}


def test_layer_names_the_rule_files_select():
    lenet = _names(LeNet300100())
    assert {lenet[n] for n in ("fc1", "fc2", "fc3")} == {nn.Linear}
    lenet5 = _names(LeNet5())
    assert lenet5["conv1"] is nn.Conv2d and lenet5["conv2"] is nn.Conv2d and lenet5["fc3"] is nn.Linear
    resnet = _names(ResNet20())
    assert resnet["layer1.0.conv1"] is nn.Conv2d and resnet["layer3.2.bn2"] is nn.BatchNorm2d
    assert resnet["layer2.0.shortcut.0"] is nn.Conv2d and resnet["layer2.0.shortcut.1"] is nn.BatchNorm2d
    assert len(ResNet20().layer1[0].shortcut) == 0  # identity shortcut where the shape is kept
    # 19 3x3 convs + fc are the 20 weighted layers of [He et al. 2016]; plus 2 projections
    convs = [m for m in ResNet20().modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 19 and len(convs) == 21
    vit = _names(ViT())
    assert vit["encoder.layers.1.self_attn"] is nn.MultiheadAttention
    assert issubclass(vit["encoder.layers.0.linear1"], nn.Linear)
    assert vit["patch_embed"] is nn.Conv2d and vit["head"] is nn.Linear and vit["norm"] is nn.LayerNorm
    tiny = TinyTransformer()
    assert tiny.encoder.layers[0].self_attn.in_proj_weight.shape == (3 * 32, 32)
    assert isinstance(tiny.proj, nn.Linear) and isinstance(tiny.head, nn.Linear)


def test_vgg11_structure_and_width():
    from tedepr_fx.models import VGG11

    model = VGG11(width=0.25)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 128, 128, 128, 128]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 8
    assert model.classifier.in_features == 128
    plain = VGG11(batch_norm=False, width=0.125)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert plain(plain.example_input(2)).shape == (2, 10)


def test_lenet300100_accepts_images_and_vectors():
    model = LeNet300100()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(x), model(x.reshape(2, 784)))


def test_lenet5_fc1_follows_image_size():
    assert LeNet5().fc1.in_features == 16 * 5 * 5
    model = LeNet5(in_channels=3, image_size=32)
    assert model.fc1.in_features == 16 * 6 * 6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="image_size"):
        LeNet5(image_size=8)


def test_lstm_classifies_the_last_time_step():
    torch.manual_seed(0)
    model = LSTMClassifier(input_size=8, hidden_size=16, num_layers=2)
    images = torch.randn(3, 1, 8, 8)
    _, (h_n, _) = model.lstm(images.squeeze(1))
    # the top layer's final hidden state is the last time step's output
    torch.testing.assert_close(model(images), model.fc(h_n[-1]))
    torch.testing.assert_close(model(images), model(images.squeeze(1)))


def test_lstm_time_major():
    torch.manual_seed(0)
    model = LSTMClassifier(input_size=5, hidden_size=7, batch_first=False)
    x = model.example_input(4)
    assert x.shape == (8, 4, 5)
    _, (h_n, _) = model.lstm(x)
    torch.testing.assert_close(model(x), model.fc(h_n[-1]))


def test_functional_mlp_matches_linear_layers():
    torch.manual_seed(0)
    model = FunctionalMLP(in_features=12, hidden=9, num_classes=4)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert {n for n, _ in model.named_parameters()} == {"w1", "b1", "w2", "b2"}
    ref = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))
    with torch.no_grad():
        ref[0].weight.copy_(model.w1); ref[0].bias.copy_(model.b1)  # noqa: E702
        ref[2].weight.copy_(model.w2); ref[2].bias.copy_(model.b2)  # noqa: E702
    x = torch.randn(5, 12)
    torch.testing.assert_close(model(x), ref(x))


def test_conv_functional_matches_module_layers():
    torch.manual_seed(0)
    model = ConvFunctional(in_channels=2, channels=6, num_classes=3, image_size=10)
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    conv, head = nn.Conv2d(2, 6, 3, padding=1), nn.Linear(6, 3)
    with torch.no_grad():
        conv.weight.copy_(model.weight); conv.bias.copy_(model.bias)  # noqa: E702
        head.weight.copy_(model.head_weight); head.bias.copy_(model.head_bias)  # noqa: E702
    x = model.example_input(3)
    expected = head(F.max_pool2d(torch.relu(conv(x)), 2).mean(dim=(2, 3)))
    torch.testing.assert_close(model(x), expected)
    traced = fx.symbolic_trace(model)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert F.conv2d in targets and F.linear in targets


@pytest.mark.parametrize("factory", [ViT, TinyTransformer])
def test_transformer_fast_path_agrees_with_python_path(factory):
    torch.manual_seed(0)
    model = factory().eval()
    x = model.example_input(3)
    slow = model(x)  # grad enabled: torch takes the Python path
    with torch.no_grad():
        fast = model(x)  # eval + no_grad: the fused fast path
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            disabled = model(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(disabled, slow)
    # no dropout and no batch norm: train mode computes the same function
    torch.testing.assert_close(model.train()(x), slow)


def test_vit_does_not_trace_through_the_encoder():
    class Descend(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.MultiheadAttention,
                                  nn.Dropout))

    with pytest.raises(fx.proxy.TraceError, match="control flow"):
        Descend().trace(ViT())
    leaf_calls = [n.target for n in fx.symbolic_trace(ViT()).graph.nodes if n.op == "call_module"]
    assert "encoder" in leaf_calls


def test_sequence_models_read_image_rows_as_time_steps():
    images = torch.randn(2, 1, 8, 8)
    tiny = TinyTransformer(in_features=8).eval()
    torch.testing.assert_close(tiny(images), tiny(images.squeeze(1)))
    assert tiny(images).shape == (2, 10)


def test_bad_constructor_arguments_are_named():
    with pytest.raises(ValueError, match="patch_size"):
        ViT(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="heads"):
        ViT(dim=30, heads=4)
    from tedepr_fx.models import VGG11
    with pytest.raises(ValueError, match="width"):
        VGG11(width=0)
