"""Each scorer against an independent computation on a 2-layer toy model.

The references are written out by hand: the network as an explicit expression of
its weights, gradients with torch.autograd on that expression (no functional_call,
no tedepr_fx code), so a mistake in the scorers' plumbing shows up as a mismatch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tedepr_fx.layers.masked import MaskedLinear, MaskedMixin
from tedepr_fx.scoring import collect_targets, get_scorer

# the hand-written references are of one meta-gradient: one round, no flow term
ONE_SHOT = {"iterations": 1, "flow": False}


class TwoFactor(MaskedMixin, nn.Module):
    """A toy factorized layer: ``x @ (A * mA) @ (B * mB)``."""

    prunable = ("A", "B")

    def __init__(self, n_in: int, rank: int, n_out: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(n_in, rank) / n_in**0.5)
        self.B = nn.Parameter(torch.randn(rank, n_out) / rank**0.5)
        self.init_masks()

    def forward(self, x):
        return x @ self.masked("A") @ self.masked("B")


def mlp(act: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(MaskedLinear(4, 6), act, MaskedLinear(6, 3))


def data(n_batches: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g))
            for _ in range(n_batches)]


def ref_forward(w1, b1, w2, b2, x, act=torch.tanh):
    return act(x @ w1.T + b1) @ w2.T + b2


def leaves(model):
    return [p.detach().clone().requires_grad_(True)
            for p in (model[0].weight, model[0].bias, model[2].weight, model[2].bias)]


@pytest.mark.parametrize(("first_order", "checkpoint"), [(False, True), (False, False), (True, True)])
def test_trainability_matches_hand_written_meta_gradient(first_order, checkpoint):
    model, batches = mlp(nn.Tanh()), data(2)
    steps, lr = 3, 0.5
    scores = get_scorer("trainability", **ONE_SHOT, steps=steps, inner_lr=lr, first_order=first_order,
                        checkpoint=checkpoint).score(model, collect_targets(model), batches)

    m1 = torch.ones(6, 4, requires_grad=True)
    m2 = torch.ones(3, 6, requires_grad=True)
    w1, b1, w2, b2 = leaves(model)
    for k in range(steps):
        x, y = batches[k % 2]
        loss = F.cross_entropy(ref_forward(w1 * m1, b1, w2 * m2, b2, x), y)
        gs = torch.autograd.grad(loss, [w1, b1, w2, b2], create_graph=not first_order)
        w1, b1, w2, b2 = (p - lr * g for p, g in zip((w1, b1, w2, b2), gs))
    x, y = batches[steps % 2]
    final = F.cross_entropy(ref_forward(w1 * m1, b1, w2 * m2, b2, x), y)
    g1, g2 = torch.autograd.grad(final, [m1, m2])
    torch.testing.assert_close(scores["0.weight"], g1.abs())
    torch.testing.assert_close(scores["2.weight"], g2.abs())


def test_trainability_second_order_terms_matter():
    model, batches = mlp(nn.Tanh()), data(2)
    full = get_scorer("trainability", **ONE_SHOT, inner_lr=0.5).score(model, collect_targets(model), batches)
    first = get_scorer("trainability", **ONE_SHOT, inner_lr=0.5, first_order=True).score(
        model, collect_targets(model), batches)
    assert not torch.allclose(full["0.weight"], first["0.weight"])


@pytest.mark.parametrize("checkpoint", [True, False])
def test_trainability_on_factor_tensors(checkpoint):
    torch.manual_seed(0)
    model = nn.Sequential(TwoFactor(4, 2, 3))
    batches = data(1)
    scores = get_scorer("trainability", **ONE_SHOT, steps=2, inner_lr=0.3, checkpoint=checkpoint).score(
        model, collect_targets(model), batches)
    A = model[0].A.detach().clone().requires_grad_(True)
    B = model[0].B.detach().clone().requires_grad_(True)
    mA, mB = torch.ones_like(A, requires_grad=True), torch.ones_like(B, requires_grad=True)
    x, y = batches[0]
    for _ in range(2):
        gA, gB = torch.autograd.grad(F.cross_entropy(x @ (A * mA) @ (B * mB), y), [A, B],
                                     create_graph=True)
        A, B = A - 0.3 * gA, B - 0.3 * gB
    ga, gb = torch.autograd.grad(F.cross_entropy(x @ (A * mA) @ (B * mB), y), [mA, mB])
    torch.testing.assert_close(scores["0.A"], ga.abs())
    torch.testing.assert_close(scores["0.B"], gb.abs())


def test_trainability_reads_one_batch_per_step_then_one_for_the_final_loss():
    model, batches = mlp(nn.Tanh()), data(6)
    scorer = get_scorer("trainability", **ONE_SHOT, steps=2, inner_lr=0.5)
    first_three = scorer.score(model, collect_targets(model), batches[:3])
    all_six = scorer.score(model, collect_targets(model), batches)
    reordered = scorer.score(model, collect_targets(model), [batches[1], batches[0], batches[2]])
    for key in all_six:
        torch.testing.assert_close(all_six[key], first_three[key])
    assert not torch.allclose(reordered["0.weight"], all_six["0.weight"])


@pytest.mark.parametrize("checkpoint", [True, False])
def test_trainability_scores_a_frozen_target_through_the_other_weights(checkpoint):
    model, batches = mlp(nn.Tanh()), data(2)
    model[0].weight.requires_grad_(False)
    scores = get_scorer("trainability", **ONE_SHOT, steps=2, inner_lr=0.5, checkpoint=checkpoint).score(
        model, collect_targets(model), batches)
    m1, m2 = torch.ones(6, 4, requires_grad=True), torch.ones(3, 6, requires_grad=True)
    w1, b1, w2, b2 = leaves(model)
    w1 = w1.detach()
    for k in range(2):
        x, y = batches[k]
        loss = F.cross_entropy(ref_forward(w1 * m1, b1, w2 * m2, b2, x), y)
        gs = torch.autograd.grad(loss, [b1, w2, b2], create_graph=True)
        b1, w2, b2 = (p - 0.5 * g for p, g in zip((b1, w2, b2), gs))
    x, y = batches[0]
    g1, g2 = torch.autograd.grad(F.cross_entropy(ref_forward(w1 * m1, b1, w2 * m2, b2, x), y), [m1, m2])
    torch.testing.assert_close(scores["0.weight"], g1.abs())
    torch.testing.assert_close(scores["2.weight"], g2.abs())


def test_checkpointed_and_unrolled_agree_with_dropout_and_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(MaskedLinear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                          MaskedLinear(8, 3))
    batches = data(6)
    kw = dict(steps=3, inner_lr=0.3, seed=4)
    a = get_scorer("trainability", **ONE_SHOT, checkpoint=True, **kw).score(model, collect_targets(model), batches)
    b = get_scorer("trainability", **ONE_SHOT, checkpoint=False, **kw).score(model, collect_targets(model), batches)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-7)


def test_snip_is_abs_of_summed_gradient_times_weight():
    model, batches = mlp(nn.Tanh()), data(3)
    scores = get_scorer("snip").score(model, collect_targets(model), batches)
    w1, b1, w2, b2 = leaves(model)
    loss = sum(F.cross_entropy(ref_forward(w1, b1, w2, b2, x), y) for x, y in batches)
    g1, g2 = torch.autograd.grad(loss, [w1, w2])
    torch.testing.assert_close(scores["0.weight"], (g1 * w1).abs().detach())
    torch.testing.assert_close(scores["2.weight"], (g2 * w2).abs().detach())


def test_grasp_is_weight_times_hessian_gradient_product():
    model, batches = mlp(nn.Tanh()), data(2)
    scores = get_scorer("grasp").score(model, collect_targets(model), batches)
    w1, b1, w2, b2 = leaves(model)
    b1, b2 = b1.detach(), b2.detach()

    def loss(a, b):  # temperature 200 divides the logits (Wang et al. 2020)
        return sum(F.cross_entropy(ref_forward(a, b1, b, b2, x) / 200.0, y) for x, y in batches)

    g = torch.autograd.grad(loss(w1, w2), [w1, w2])
    _, hg = torch.autograd.functional.hvp(loss, (w1.detach(), w2.detach()), g)
    # keep-score = -(GraSP's removal score -w*Hg)
    torch.testing.assert_close(scores["0.weight"], (w1 * hg[0]).detach(), rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(scores["2.weight"], (w2 * hg[1]).detach(), rtol=1e-4, atol=1e-10)


def synflow_reference(model, mask1, mask2):
    """|w * dR/dw| with R = 1^T |W2|(|W1| 1 + |b1|) + ... on the masked abs network (ReLU = id)."""
    w1 = (model[0].weight.detach().abs() * mask1).requires_grad_(True)
    w2 = (model[2].weight.detach().abs() * mask2).requires_grad_(True)
    b1, b2 = model[0].bias.detach().abs(), model[2].bias.detach().abs()
    r = ((w1 @ torch.ones(4) + b1) @ w2.T + b2).sum()
    g1, g2 = torch.autograd.grad(r, [w1, w2])
    return (g1 * w1).detach(), (g2 * w2).detach()


def topk_masks(s1, s2, keep):
    flat = torch.cat([s1.reshape(-1), s2.reshape(-1)])
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[torch.sort(flat, descending=True, stable=True).indices[:keep]] = True
    return chosen[: s1.numel()].reshape(s1.shape), chosen[s1.numel():].reshape(s2.shape)


def test_synflow_single_round_formula():
    model = mlp(nn.ReLU())
    x = torch.randn(2, 4)
    density = 0.4
    scores = get_scorer("synflow", iterations=1, density=density).score(
        model, collect_targets(model), [], example_inputs=x)
    s1, s2 = synflow_reference(model, torch.ones(6, 4), torch.ones(3, 6))
    k1, k2 = topk_masks(s1, s2, round(density * 42))
    peak = max(s1.max(), s2.max())
    torch.testing.assert_close(scores["0.weight"], (1.0 + k1.float()) + 0.5 * s1 / peak)
    torch.testing.assert_close(scores["2.weight"], (1.0 + k2.float()) + 0.5 * s2 / peak)


def test_synflow_iterative_mask_matches_hand_loop():
    model = mlp(nn.ReLU())
    density, rounds = 0.2, 4
    scores = get_scorer("synflow", iterations=rounds).score(
        model, collect_targets(model), [], example_inputs=torch.randn(1, 4), density=density)
    m1, m2 = torch.ones(6, 4, dtype=torch.bool), torch.ones(3, 6, dtype=torch.bool)
    for k in range(1, rounds + 1):
        s1, s2 = synflow_reference(model, m1.float(), m2.float())
        s1, s2 = torch.where(m1, s1, -1.0), torch.where(m2, s2, -1.0)
        m1, m2 = topk_masks(s1, s2, round(density ** (k / rounds) * 42))
    keep = round(density * 42)
    got1, got2 = topk_masks(scores["0.weight"], scores["2.weight"], keep)
    assert torch.equal(got1, m1) and torch.equal(got2, m2)


def test_force_rescoring_on_pruned_network():
    model, batches = mlp(nn.Tanh()), data(2)
    density = 0.3
    scores = get_scorer("force", iterations=2, density=density).score(
        model, collect_targets(model), batches)

    def sensitivity(m1, m2):
        w1, b1, w2, b2 = leaves(model)
        e1, e2 = (w1 * m1).detach().requires_grad_(True), (w2 * m2).detach().requires_grad_(True)
        loss = sum(F.cross_entropy(ref_forward(e1, b1, e2, b2, x), y) for x, y in batches)
        g1, g2 = torch.autograd.grad(loss, [e1, e2])
        return (g1 * w1).abs().detach(), (g2 * w2).abs().detach()

    s1, s2 = sensitivity(torch.ones(6, 4), torch.ones(3, 6))
    k1, k2 = topk_masks(s1, s2, round(density ** 0.5 * 42))
    r1, r2 = sensitivity(k1.float(), k2.float())
    torch.testing.assert_close(scores["0.weight"], r1)
    torch.testing.assert_close(scores["2.weight"], r2)


def test_magnitude_is_abs_weight():
    model = nn.Sequential(TwoFactor(4, 2, 3))
    scores = get_scorer("magnitude").score(model, collect_targets(model), [])
    torch.testing.assert_close(scores["0.A"], model[0].A.detach().abs())
    torch.testing.assert_close(scores["0.B"], model[0].B.detach().abs())


def test_random_is_seeded_and_seed_dependent():
    model = mlp(nn.ReLU())
    targets = collect_targets(model)
    a = get_scorer("random", seed=3).score(model, targets, [])
    b = get_scorer("random", seed=3).score(model, targets, [])
    c = get_scorer("random", seed=4).score(model, targets, [])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])
    assert all(((v >= 0) & (v < 1)).all() for v in a.values())


@pytest.mark.parametrize("scorer", ["trainability", "grasp"])
def test_scorers_that_differentiate_twice_work_through_torch_attention(scorer):
    # nn.MultiheadAttention runs the fused CPU attention kernel, which has no double
    # backward; exact trainability and GraSP must switch to the math kernel themselves
    import tedepr_fx
    from tedepr_fx.models import ViT

    torch.manual_seed(0)
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(2)]
    rules = tedepr_fx.load_rules("rules/vit.yaml").model_copy(update={"defaults": tedepr_fx.load_rules(
        "rules/vit.yaml").defaults.model_copy(update={"scorer": scorer})})
    out = tedepr_fx.transform(model, rules.with_budget(sparsity=0.9), data=data, verbose=False)
    assert tedepr_fx.report(out).totals["kept"] > 0
    assert get_scorer("trainability").differentiates_twice
    assert not get_scorer("trainability", first_order=True).differentiates_twice
