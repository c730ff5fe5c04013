import pytest
import torch
from hypothesis import given, strategies as st

from torchrec_din.ops import (
    broadcast_to_segments,
    lengths_to_segment_ids,
    segment_softmax,
    segment_sum,
)

lengths_strategy = st.lists(st.integers(0, 12), min_size=0, max_size=16)


def _grads(fn, *inputs):
    out = fn(*inputs)
    if out.numel() == 0:  # an empty batch has no gradient to compare
        return out, tuple(torch.zeros_like(x) for x in inputs)
    weight = torch.randn_like(out, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad((out * weight).sum(), inputs, allow_unused=True)
    return out, grads


def _inputs(lengths_list, width, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths_list, dtype=torch.long)
    n = int(lengths.sum())
    values = torch.randn(n, width, generator=g, requires_grad=True)
    per_sample = torch.randn(len(lengths_list), width, generator=g, requires_grad=True)
    return lengths, values, per_sample


def test_segment_ids_example() -> None:
    assert lengths_to_segment_ids(torch.tensor([2, 0, 1])).tolist() == [0, 0, 2]


@given(lengths_strategy, st.integers(0, 2**16))
def test_segment_sum_matches_reference(lengths_list, seed) -> None:
    lengths, values, _ = _inputs(lengths_list, 3, seed)
    ref, ref_g = _grads(lambda v: segment_sum(v, lengths, impl="reference"), values)
    out, g = _grads(lambda v: segment_sum(v, lengths), values)
    assert out.shape == (len(lengths_list), 3)
    torch.testing.assert_close(out, ref)
    if values.numel():
        torch.testing.assert_close(g[0], ref_g[0])
    empty = lengths == 0
    assert torch.all(out[empty] == 0)


@given(lengths_strategy, st.integers(0, 2**16))
def test_broadcast_matches_reference(lengths_list, seed) -> None:
    lengths, values, per_sample = _inputs(lengths_list, 3, seed)
    ref, ref_g = _grads(lambda x: broadcast_to_segments(x, lengths, impl="reference"), per_sample)
    out, g = _grads(lambda x: broadcast_to_segments(x, lengths), per_sample)
    assert out.shape == values.shape
    torch.testing.assert_close(out, ref)
    if per_sample.numel():
        torch.testing.assert_close(g[0], ref_g[0] if ref_g[0] is not None else torch.zeros_like(g[0]))


@pytest.mark.parametrize("impl", ["torch", "fbgemm"])
@given(lengths=lengths_strategy, seed=st.integers(0, 2**16))
def test_segment_softmax_matches_reference(impl, lengths, seed) -> None:
    lens = torch.tensor(lengths, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(int(lens.sum()), generator=g) * 10).requires_grad_()
    ref, ref_g = _grads(lambda s: segment_softmax(s, lens, impl="reference"), scores)
    out, grads = _grads(lambda s: segment_softmax(s, lens, impl=impl), scores)
    torch.testing.assert_close(out, ref)
    if scores.numel():
        torch.testing.assert_close(grads[0], ref_g[0])
        sums = segment_sum(out.detach().unsqueeze(1), lens).squeeze(1)
        torch.testing.assert_close(sums[lens > 0], torch.ones(int((lens > 0).sum())))


def test_softmax_is_stable_for_large_scores() -> None:
    lens = torch.tensor([2, 1])
    out = segment_softmax(torch.tensor([1000.0, 1000.0, -1000.0]), lens)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.5, 1.0]))


def test_bad_impl_is_rejected() -> None:
    with pytest.raises(ValueError, match="impl must be one of"):
        segment_sum(torch.zeros(1, 1), torch.tensor([1]), impl="cuda")
