"""The README's guarantees, as properties over random small MLP, CNN and LSTM models.

1. ``transform`` never modifies its input: parameters, buffers, modes and hooks.
2. Same model, rules, data and seed: a bit-identical result (here, in one process; in
   another process below; in other threads in ``test_hardening.py``).
3. A pruned entry stays without effect: whatever it holds (NaN, huge values), the output
   is bit-identical, after an optimizer step, a deepcopy, ``save``/``load`` and a dtype change.
"""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import tedepr_fx
from tedepr_fx.layers.masked import iter_masked

REPO = Path(__file__).resolve().parent.parent


class LSTMNet(nn.Module):
    def __init__(self, hidden: int, classes: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def build(kind: str, width: int, classes: int, dropout: bool) -> tuple[nn.Module, torch.Tensor]:
    """A small model of ``kind`` and an input batch for it."""
    drop: list[nn.Module] = [nn.Dropout(0.25)] if dropout else []
    if kind == "mlp":
        model: nn.Module = nn.Sequential(nn.Linear(12, width), nn.BatchNorm1d(width), nn.ReLU(), *drop,
                                         nn.Linear(width, classes))
        shape: tuple[int, ...] = (6, 12)
    elif kind == "cnn":
        model = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), *drop,
                              nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, classes))
        shape = (6, 2, 6, 6)
    else:
        model, shape = LSTMNet(width, classes), (6, 4, 6)
    return model, torch.randn(shape)


def rules(action: str, scorer: str) -> dict:
    rule: dict = {"name": "all", "match": {"name": "*"}, "action": action}
    if action == "factorize":
        rule = {**rule, "match": {"type": ["Linear", "Conv2d"]}, "factorize": {"format": "tucker", "rank": 2}}
    return {"version": 1, "defaults": {"scorer": scorer, "budget": {"sparsity": 0.6}}, "rules": [rule]}


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool], dict[str, tuple[int, ...]]]:
    """Every tensor, mode and hook count of ``model``, by name."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes = {n: m.training for n, m in model.named_modules()}
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for n, m in model.named_modules()}
    return tensors, modes, hooks


def fill_pruned(model: nn.Module, value: float) -> None:
    """Write ``value`` into every pruned entry of every masked tensor."""
    with torch.no_grad():
        for _, module, name in iter_masked(model):
            getattr(module, name)[~module.get_mask(name)] = value


def assert_pruned_without_effect(model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        expected = model(x)
        for value in (float("nan"), 1e30):
            fill_pruned(model, value)
            assert torch.equal(model(x), expected), f"a pruned entry holding {value} changed the output"


@st.composite
def cases(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["mlp", "cnn", "lstm"]))
    return {"kind": kind, "width": draw(st.integers(3, 8)), "classes": draw(st.integers(2, 5)),
            "dropout": draw(st.booleans()), "train": draw(st.booleans()),
            "action": draw(st.sampled_from(["prune"] if kind == "lstm" else ["prune", "factorize"])),
            "scorer": draw(st.sampled_from(["magnitude", "random", "snip"])), "seed": draw(st.integers(0, 2**16))}


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_transform_keeps_its_guarantees_on_random_small_models(case, tmp_path_factory):
    torch.manual_seed(case["seed"])
    model, x = build(case["kind"], case["width"], case["classes"], case["dropout"])
    model.train(case["train"])
    model.register_forward_hook(lambda module, args, out: None)
    y = torch.randint(0, case["classes"], (x.shape[0],))
    spec = rules(case["action"], case["scorer"])
    before = snapshot(model)

    def run() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tedepr_fx.transform(model, spec, example_inputs=(x,), data=[(x, y)], seed=case["seed"])

    out = run()
    # 1. the input is untouched
    after = snapshot(model)
    assert after[1:] == before[1:]
    assert after[0].keys() == before[0].keys()
    assert all(torch.equal(after[0][k], before[0][k]) for k in before[0])
    # 2. same inputs, same seed: bit-identical
    again = run().state_dict()
    assert out.state_dict().keys() == again.keys()
    assert all(torch.equal(v, again[k]) for k, v in out.state_dict().items())
    # 3. pruned entries have no effect, through an optimizer step, deepcopy, save/load, dtype change
    assert any(True for _ in iter_masked(out))
    out.train()
    optimizer = torch.optim.Adam(out.parameters(), lr=0.1)
    nn.functional.cross_entropy(out(x), y).backward()
    optimizer.step()
    assert_pruned_without_effect(out, x)
    assert_pruned_without_effect(copy.deepcopy(out), x)
    path = tmp_path_factory.mktemp("saved") / "model.tedepr"
    tedepr_fx.save(out, path)
    fresh = build(case["kind"], case["width"], case["classes"], case["dropout"])[0]
    assert_pruned_without_effect(tedepr_fx.load(path, model=fresh), x)
    assert_pruned_without_effect(copy.deepcopy(out).double(), x.double())


SCRIPT = """
import hashlib, warnings, torch, tedepr_fx
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))
x, y = torch.randn(6, 12), torch.tensor([0, 1, 2, 3, 0, 1])
rules = {"version": 1, "defaults": {"scorer": "trainability", "budget": {"sparsity": 0.7}},
         "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "factorize",
                    "factorize": {"format": "tucker", "rank": 3}}]}
warnings.simplefilter("ignore")
out = tedepr_fx.transform(model, rules, example_inputs=(x,), data=[(x, y)], seed=5)
digest = hashlib.sha256()
for key, value in sorted(out.state_dict().items()):
    digest.update(key.encode())
    digest.update(value.detach().contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def test_the_same_transform_is_bit_identical_in_another_process():
    namespace: dict = {}
    with warnings.catch_warnings():
        from contextlib import redirect_stdout
        from io import StringIO

        printed = StringIO()
        with redirect_stdout(printed):
            exec(compile(SCRIPT, "<guarantee>", "exec"), namespace)  # noqa: S102 - our own script
    here = printed.getvalue().strip()
    there = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, check=True)
    assert there.stdout.strip() == here and len(here) == len(hashlib.sha256().hexdigest())


def test_pruned_entries_stay_without_effect_under_compile_and_ddp(tmp_path):
    import torch.distributed as dist

    torch.manual_seed(0)
    model, x = build("mlp", 8, 3, dropout=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tedepr_fx.transform(model, rules("prune", "magnitude"), example_inputs=(x,)).eval()
    with torch.no_grad():
        expected = out(x)
    fill_pruned(out, float("nan"))
    compiled = torch.compile(out, backend="aot_eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), expected)
    if not dist.is_available():
        return
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(out)
        with torch.no_grad():
            assert torch.equal(ddp(x), expected)
    finally:
        dist.destroy_process_group()
