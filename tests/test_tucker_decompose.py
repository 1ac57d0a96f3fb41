"""Partial HOSVD of a weight: exactness, truncation optimality, and the memory rule."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from tedepr_fx.decompose.tucker import partial_tucker2, tucker2_scratch
from tedepr_fx.formats.tucker import tucker_max_ranks


def _rebuild(factor_out, core, factor_in):
    return torch.tensordot(factor_in, torch.tensordot(factor_out, core, dims=1), dims=([1], [1])).movedim(0, 1)


@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (3, 40), (40, 3), (6, 7, 2, 5), (4, 4, 3, 3, 3)])
def test_full_rank_partial_tucker_is_exact(shape):
    torch.manual_seed(0)
    weight = torch.randn(*shape, dtype=torch.float64)
    factors = partial_tucker2(weight, tucker_max_ranks(shape))
    torch.testing.assert_close(_rebuild(*factors), weight, rtol=1e-10, atol=1e-10)
    eye = torch.eye(factors[0].shape[1], dtype=torch.float64)
    torch.testing.assert_close(factors[0].t() @ factors[0], eye)


def test_truncated_factors_span_the_leading_singular_subspaces():
    torch.manual_seed(0)
    weight = torch.randn(20, 12, 3, 3, dtype=torch.float64)
    u_out, _, u_in = partial_tucker2(weight, [5, 4])
    reference = torch.linalg.svd(weight.reshape(20, -1), full_matrices=False)[0][:, :5]
    # same subspace: the projectors agree
    torch.testing.assert_close(u_out @ u_out.t(), reference @ reference.t())
    reference_in = torch.linalg.svd(weight.transpose(0, 1).reshape(12, -1), full_matrices=False)[0][:, :4]
    torch.testing.assert_close(u_in @ u_in.t(), reference_in @ reference_in.t())


def peak_cpu_bytes(fn) -> int:
    """Peak of live torch CPU allocations during ``fn()``, from torch.profiler's memory events.

    Allocations are the ops' self memory, frees the ``[memory]`` events; replaying them in time
    order gives the live-bytes curve.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_the_memory_probe_sees_a_rest_by_rest_gram_matrix():
    weight = torch.randn(16, 4096)
    assert peak_cpu_bytes(lambda: weight.t() @ weight) >= 4096 * 4096 * 4


@pytest.mark.parametrize("shape", [(16, 16, 16, 16), (16, 4096), (4096, 16)])
def test_decomposition_never_allocates_more_than_a_few_weights(shape):
    # the mode-0 unfolding is 16 x 4096 wide: its 4096 x 4096 Gram would be 256 weights
    torch.manual_seed(0)
    weight = torch.randn(*shape)
    ranks = tucker_max_ranks(shape)
    peak = peak_cpu_bytes(lambda: partial_tucker2(weight, ranks))
    assert peak <= 4 * weight.numel() * weight.element_size()


def test_scratch_on_meta_allocates_nothing_and_has_the_right_shapes():
    factors = tucker2_scratch((64, 32, 3, 3), [8, 4], 1e-3, device="meta")
    assert [tuple(f.shape) for f in factors] == [(64, 8), (8, 4, 3, 3), (32, 4)]
    assert all(f.is_meta for f in factors)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\[r_out, r_in\]"):
        partial_tucker2(torch.randn(4, 4), [2])
    with pytest.raises(ValueError, match="at least 2 dims"):
        partial_tucker2(torch.randn(4), [2, 2])
