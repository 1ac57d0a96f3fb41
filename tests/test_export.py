"""Transformed and baked models through ``torch.export`` (under ``no_grad`` and in training
mode), the ONNX exporter (``dynamo=True``, run in onnxruntime) and ``torch.compile`` (inductor):
the same outputs as eager, a dynamic batch, training steps, and no recompilation per step."""

from __future__ import annotations

import copy
import importlib.util
import warnings

import pytest
import torch
from torch.export import Dim
from zoo_cases import CASES, FAMILIES, Inputs, flat_output, output, transformed

import tedepr_fx

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = ("transformed", "baked")
ONNX_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(
    bool(ONNX_MISSING), reason=f"{', '.join(ONNX_MISSING)} not installed (pip install 'tedepr_fx[export]')")


def _model(case: str, stage: str) -> tuple[torch.nn.Module, Inputs]:
    model, x = CASES[case]()
    return (tedepr_fx.bake(model) if stage == "baked" else model), x


def _bigger(case: str, x: Inputs) -> Inputs:
    """The same inputs with a batch of 7 instead of the example's (a size export did not see)."""
    torch.manual_seed(1)
    if case == "bert":
        return (torch.randint(0, 100, (7, x[0].shape[1])),)
    return tuple(torch.cat([t] * 3)[:7] if t.dtype == torch.long else torch.randn(7, *t.shape[1:]) for t in x)


def _dynamic_batch(x: Inputs) -> tuple[dict[int, Dim], ...]:
    batch = Dim("batch", min=2, max=256)
    return tuple({0: batch} for _ in x)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_export_under_no_grad_serves_any_batch(case, stage):
    model, x = _model(case, stage)
    with torch.no_grad():
        ep = torch.export.export(model, x, dynamic_shapes=_dynamic_batch(x))
        exported = ep.module()
        _close(flat_output(exported(*x)), output(model, x))
        big = _bigger(case, x)
        _close(flat_output(exported(*big)), output(model, big))


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_export_in_training_mode_gives_gradients(case, stage):
    model, x = _model(case, stage)
    model.train()
    exported = torch.export.export(copy.deepcopy(model), x).module()
    out = flat_output(exported(*x))
    out.pow(2).mean().backward()
    missing = [n for n, p in exported.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return  # eager and exported dropout draw differently: nothing more to compare
    output(model, x).pow(2).mean().backward()
    _close(out, output(model, x))
    grads = dict(exported.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None:
            _close(grads[name].grad, p.grad)


@needs_onnx
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_export_runs_in_onnxruntime(case, stage, tmp_path):
    import onnxruntime

    model, x = _model(case, stage)
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, x, path, dynamo=True, dynamic_shapes=_dynamic_batch(x), verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inputs in (x, _bigger(case, x)):
        feed = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs, strict=True)}
        got = torch.cat([torch.from_numpy(o).flatten() for o in session.run(None, feed)])
        with torch.no_grad():
            _close(got, output(model, inputs).flatten())


@needs_onnx
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torchscript_onnx_exporter_serves_another_batch(family, tmp_path):
    """The legacy exporter (``dynamo=False``) traces sizes as 0-d tensors (an in-place ``*=`` on
    one changed the batch: ``shape '[2, 300]' is invalid``), drops ``out=`` writes (a TT-LSTM
    exported wrong numbers) and writes negative permutations onnxruntime rejects (Tucker)."""
    import onnxruntime

    model, x = transformed(family, batch=2)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, and says so
        torch.onnx.export(_Wrapped(model), (x,), path, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    big = torch.randn(600, *x.shape[1:])
    with torch.no_grad():
        _close(torch.from_numpy(session.run(None, {"x": big.numpy()})[0]), model(big))


class _Wrapped(torch.nn.Module):
    """A plain module around a GraphModule: the TorchScript exporter mistakes a GraphModule's
    ``graph`` for a TorchScript one."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        # the exporter puts the wrapper back in its own mode afterwards, children included: a
        # wrapper left in training mode returned the inner model in training mode (BatchNorm on
        # batch statistics), so the reference outputs after the export were not eval outputs
        self.train(inner.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


# --- torch.compile -------------------------------------------------------------------------------


def _compiled_training(model: torch.nn.Module, x: Inputs, steps: int = 3) -> None:
    """``steps`` SGD steps of the compiled model against eager steps of a copy: same outputs and
    parameters, one compiled graph, no recompilation after the first step."""
    counters = torch._dynamo.utils.counters
    torch._dynamo.reset()
    counters.clear()
    model.train()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="inductor")
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, eager)]
    frames_after_first = None
    for step in range(steps):
        outs = []
        for runner, opt in zip((compiled, eager), opts, strict=True):
            opt.zero_grad()
            out = flat_output(runner(*x))
            out.pow(2).mean().backward()
            opt.step()
            outs.append(out.detach())
        _close(outs[0], outs[1])
        if step == 0:
            frames_after_first = dict(counters["stats"])
    assert frames_after_first is not None and frames_after_first.get("unique_graphs") == 1
    assert dict(counters["stats"]) == frames_after_first, "recompiled after the first step"
    assert not counters["recompiles"] and not counters["graph_break"]
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"parameter {name} after {steps} steps")
    model.eval()
    with torch.no_grad():  # eval mode without autograd (where layers cache rebuilt weights): one graph
        for _ in range(2):
            _close(flat_output(compiled(*x)), flat_output(eager.eval()(*x)))
    assert not counters["recompiles"] and not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("stage", STAGES)
def test_compile_lenet_trains_like_eager_without_recompiling(stage):
    model, x = transformed("lenet")
    if stage == "baked":
        model = tedepr_fx.bake(model)
    _compiled_training(model, (x,))


@pytest.mark.slow
def test_compile_tiny_bert_trains_like_eager_without_recompiling():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(  # no dropout: eager and compiled draw differently
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=100,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    x = torch.randint(0, 100, (2, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tedepr_fx.transform(bert.eval(), "rules/transformer.yaml", example_inputs=(x,), verbose=False)
    _compiled_training(model, (x,))



def test_compile_serves_every_sequence_length_without_recompiling():
    """A new sequence length costs one recompile (to a dynamic-shape graph), then none: the
    layers choose their contraction order without guarding on the traced sizes."""
    model, _ = CASES["bert"]()
    counters = torch._dynamo.utils.counters
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        for length in range(3, 12):
            ids = torch.randint(0, 100, (2, length))
            _close(flat_output(compiled(ids)), output(model, (ids,)))
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
