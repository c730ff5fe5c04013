"""K candidates sharing one history equal giving every candidate its own copy of the history:
outputs, weights, gradients of queries, behaviours and every parameter, and Dice statistics."""

import copy
from typing import List

import pytest
import torch
from hypothesis import given, strategies as st
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din import JaggedTargetAttention
from torchrec_din.ops import candidate_pairs

ACTIVATIONS = ["sigmoid", "dice", "prelu", "relu"]


def _make(activation, normalization, outer, dim, seed=0):
    torch.manual_seed(seed)
    attn = JaggedTargetAttention(dim, (16, 8), activation, normalization, outer)
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if name.endswith("alpha") or (name.endswith("weight") and p.dim() == 1):
                p.uniform_(-0.5, 0.5)
    return attn


def _check(attn, lengths: List[int], counts: List[int], training: bool) -> None:
    dim = attn.embedding_dim
    ref = copy.deepcopy(attn)
    attn.train(training)
    ref.train(training)
    g = torch.Generator().manual_seed(sum(lengths) + 7 * sum(counts))
    lens, num = torch.tensor(lengths), torch.tensor(counts)
    query = torch.randn(int(num.sum()), dim, generator=g, requires_grad=True)
    values = torch.randn(int(lens.sum()), dim, generator=g, requires_grad=True)
    out, weights = attn.attend_grouped(query, values, lens, num)

    # The one-pair-per-row form: each candidate with its own copy of its history.
    pair_lengths, _, pair_behaviour = candidate_pairs(lens, num)
    q2 = query.detach().clone().requires_grad_()
    v2 = values.detach().clone().requires_grad_()
    ref_out, ref_weights = ref.attend(q2, v2.index_select(0, pair_behaviour), pair_lengths)

    assert out.shape == (int(num.sum()), dim)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-4, atol=1e-5)
    if out.numel():
        upstream = torch.randn(out.shape, generator=g)
        (out * upstream).sum().backward()
        (ref_out * upstream).sum().backward()
        torch.testing.assert_close(query.grad, q2.grad, rtol=1e-4, atol=1e-4)
        if values.numel():
            torch.testing.assert_close(values.grad, v2.grad, rtol=1e-4, atol=1e-4)
        for (name, p), (_, p_ref) in zip(attn.named_parameters(), ref.named_parameters()):
            if p_ref.grad is None:
                assert p.grad is None or not p.grad.any(), name
                continue
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-4, msg=name)
    for (name, b), (_, b_ref) in zip(attn.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, b_ref, rtol=1e-4, atol=1e-6, msg=name)


CASES = {
    "many_and_zero_candidates": ([3, 0, 5, 1, 4], [2, 3, 0, 1, 4]),
    "one_each": ([3, 0, 5, 1], [1, 1, 1, 1]),
    "no_candidates": ([2, 3], [0, 0]),
    "empty_histories": ([0, 0, 0], [2, 1, 3]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("outer,dim", [(False, 8), (True, 8), (True, 32)])
@pytest.mark.parametrize("normalization", ["none", "softmax"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_grouped_equals_one_pair_per_row(activation, normalization, outer, dim, case) -> None:
    lengths, counts = CASES[case]
    _check(_make(activation, normalization, outer, dim), lengths, counts, training=True)


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 5)), min_size=1, max_size=10),
       st.sampled_from(ACTIVATIONS), st.sampled_from(["none", "softmax"]), st.booleans())
def test_random_grouped_batches(pairs, activation, normalization, training) -> None:
    lengths, counts = [p[0] for p in pairs], [p[1] for p in pairs]
    _check(_make(activation, normalization, False, 8), lengths, counts, training)


def test_forward_num_candidates_and_script() -> None:
    attn = _make("dice", "softmax", True, 8).eval()
    lens, num = torch.tensor([3, 0, 2]), torch.tensor([2, 1, 2])
    q, v = torch.randn(5, 8), torch.randn(5, 8)
    keys = JaggedTensor(values=v, lengths=lens)
    expected = attn.attend_grouped(q, v, lens, num)[0]
    torch.testing.assert_close(attn.forward_grouped(q, keys, num), expected)
    torch.testing.assert_close(torch.jit.script(attn).forward_grouped(q, keys, num), expected)
    with pytest.raises(ValueError, match=r"candidates.lengths\(\) sum to 4 but candidates"):
        attn.forward_grouped(q, keys, torch.tensor([2, 1, 1]))
    with pytest.raises(ValueError, match=r"num_candidates must be \[B\] with B = 3"):
        attn.forward_grouped(q, keys, torch.tensor([2, 3]))


def test_interaction_grouped_equals_one_row_per_candidate() -> None:
    from torchrec import KeyedJaggedTensor

    from torchrec_din import DINInteraction
    from torchrec_din.testing.toy import TOY_GROUPS, toy_collections

    torch.manual_seed(0)
    ec, _ = toy_collections()
    din = DINInteraction.from_collections(TOY_GROUPS, [ec], hidden_units=(8,),
                                          activation="dice", normalization="softmax")
    g = torch.Generator().manual_seed(1)
    hist, counts = [3, 0, 4], [2, 1, 0]
    n, k = sum(hist), sum(counts)
    items, cates = torch.randint(0, 50, (k,), generator=g), torch.randint(0, 7, (k,), generator=g)
    h_items, h_cates = torch.randint(0, 50, (n,), generator=g), torch.randint(0, 7, (n,), generator=g)
    grouped = KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "cate", "hist_item", "hist_cate"],
        values=torch.cat([items, cates, h_items, h_cates]),
        lengths=torch.tensor(counts + counts + hist + hist))
    # One row per candidate, each with its own copy of the history.
    owner = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    starts = torch.tensor([0, 3, 3])
    rows_h = [h_items[starts[b]:starts[b] + hist[b]] for b in owner.tolist()]
    rows_c = [h_cates[starts[b]:starts[b] + hist[b]] for b in owner.tolist()]
    row_lengths = [hist[b] for b in owner.tolist()]
    flat = KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "cate", "hist_item", "hist_cate"],
        values=torch.cat([items, cates] + rows_h + rows_c),
        lengths=torch.tensor([1] * k + [1] * k + row_lengths + row_lengths))
    emb_grouped, emb_flat = ec(grouped), ec(flat)
    out = din.forward_grouped(emb_grouped)
    ref = copy.deepcopy(din)(emb_flat)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(din.candidates_grouped(emb_grouped), din.candidates(emb_flat))
    torch.testing.assert_close(torch.jit.script(din.eval()).forward_grouped(emb_grouped),
                               din.forward_grouped(emb_grouped))
