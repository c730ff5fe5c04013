import copy
from typing import List

import pytest
import torch
from hypothesis import given, strategies as st
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din import JaggedTargetAttention
from torchrec_din.testing import padded_target_attention

D = 8
CASES = {
    "ragged_with_empty": [3, 0, 5, 1, 0, 7, 2, 0, 4],
    "all_empty": [0, 0, 0, 0],
    "length_one": [1, 1, 1, 1, 1],
    "very_long": [1200, 0, 3, 1, 17],
    "single_row": [6],
}
ACTIVATIONS = ["sigmoid", "dice", "prelu", "relu"]
NORMALIZATIONS = ["none", "softmax"]


def _make(activation: str, normalization: str, outer: bool, seed: int = 0,
          dim: int = D) -> JaggedTargetAttention:
    torch.manual_seed(seed)
    attn = JaggedTargetAttention(
        dim, hidden_units=(16, 8), activation=activation, normalization=normalization,
        use_outer_product=outer,
    )
    # Non-trivial Dice/PReLU parameters so that every parameter's gradient is exercised.
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if name.endswith("alpha") or name.endswith("weight") and p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return attn


def _inputs(lengths: List[int], seed: int = 1, dim: int = D):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths, dtype=torch.long)
    query = torch.randn(len(lengths), dim, generator=g, requires_grad=True)
    values = torch.randn(int(lens.sum()), dim, generator=g, requires_grad=True)
    return query, values, lens


def _check_against_padded(attn, lengths, training: bool, pad_extra: int = 3) -> None:
    ref = copy.deepcopy(attn)
    attn.train(training)
    ref.train(training)
    dim = attn.embedding_dim
    query, values, lens = _inputs(lengths, dim=dim)
    q2 = query.detach().clone().requires_grad_()
    v2 = values.detach().clone().requires_grad_()

    out, weights = attn.forward_with_weights(query, JaggedTensor(values=values, lengths=lens))
    max_len = (max(lengths) if lengths else 0) + pad_extra
    ref_out, ref_weights, mask = padded_target_attention(ref, q2, v2, lens, max_len)

    assert out.shape == (len(lengths), dim)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weights.values(), ref_weights[mask], rtol=1e-4, atol=1e-5)
    if len(lengths):
        assert torch.all(out[lens == 0] == 0), "empty history must give a zero vector"

    g = torch.Generator().manual_seed(3)
    upstream = torch.randn(out.shape, generator=g)
    (out * upstream).sum().backward()
    (ref_out * upstream).sum().backward()
    torch.testing.assert_close(query.grad, q2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(values.grad, v2.grad, rtol=1e-4, atol=1e-4)
    for (name, p), (_, p_ref) in zip(attn.named_parameters(), ref.named_parameters()):
        assert p.grad is not None and p_ref.grad is not None, name
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-4, msg=name)
    for (name, b), (_, b_ref) in zip(attn.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, b_ref, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_equals_padded_reference(activation, normalization, case) -> None:
    attn = _make(activation, normalization, outer=False)
    _check_against_padded(attn, CASES[case], training=True)


@pytest.mark.parametrize("case", ["ragged_with_empty", "all_empty", "very_long"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("activation", ["sigmoid", "dice"])
def test_outer_product_equals_padded_reference(activation, normalization, case) -> None:
    attn = _make(activation, normalization, outer=True)
    _check_against_padded(attn, CASES[case], training=True)


@pytest.mark.parametrize("case", ["ragged_with_empty", "all_empty", "length_one"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_wide_outer_product_bilinear_path_equals_padded_reference(normalization, case) -> None:
    # D = 32 > OUTER_GEMM_MAX_DIM: the outer product runs through FBGEMM's jagged_dense_bmm.
    attn = _make("dice", normalization, outer=True, dim=32)
    _check_against_padded(attn, CASES[case], training=True)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_eval_mode_equals_padded_reference(activation) -> None:
    attn = _make(activation, "softmax", outer=False)
    # Move Dice's running statistics off their initial values first.
    attn.train()
    query, values, lens = _inputs(CASES["very_long"], seed=5)
    attn(query, JaggedTensor(values=values, lengths=lens))
    _check_against_padded(attn, CASES["ragged_with_empty"], training=False)


@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=24),
    activation=st.sampled_from(ACTIVATIONS),
    normalization=st.sampled_from(NORMALIZATIONS),
)
def test_random_ragged_batches_equal_padded(lengths, activation, normalization) -> None:
    _check_against_padded(_make(activation, normalization, outer=False), lengths, training=True)


def test_empty_batch() -> None:
    attn = _make("dice", "softmax", outer=False)
    query, values, lens = _inputs([])
    out = attn(query, JaggedTensor(values=values, lengths=lens))
    assert out.shape == (0, D)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_rows_are_independent_in_eval(activation) -> None:
    attn = _make(activation, "none", outer=True).eval()
    lengths = CASES["ragged_with_empty"]
    query, values, lens = _inputs(lengths)
    full = attn(query, JaggedTensor(values=values, lengths=lens))
    offsets = [0] + torch.cumsum(lens, 0).tolist()
    for b in range(len(lengths)):
        single = attn(
            query[b : b + 1],
            JaggedTensor(values=values[offsets[b] : offsets[b + 1]], lengths=lens[b : b + 1]),
        )
        torch.testing.assert_close(full[b : b + 1], single, rtol=1e-5, atol=1e-6)


def test_paper_weights_are_raw_scores_and_softmax_sums_to_one() -> None:
    query, values, lens = _inputs([4, 0, 2])
    keys = JaggedTensor(values=values, lengths=lens)
    attn = _make("sigmoid", "softmax", outer=False)
    _, w = attn.forward_with_weights(query, keys)
    sums = [float(c.sum()) for c in torch.split(w.values().detach(), lens.tolist()) if c.numel()]
    assert sums == pytest.approx([1.0, 1.0], abs=1e-5)
    raw = _make("sigmoid", "none", outer=False)
    _, w_raw = raw.forward_with_weights(query, keys)
    assert not torch.allclose(w_raw.values().sum(), torch.tensor(2.0))


def test_bad_shapes_raise_clear_errors() -> None:
    attn = _make("sigmoid", "none", outer=False)
    query, values, lens = _inputs([2, 1])
    with pytest.raises(ValueError, match=r"sum to 4 but keys.values\(\) has 3 rows"):
        attn(query, JaggedTensor(values=values, lengths=torch.tensor([2, 2])))
    with pytest.raises(ValueError, match="B = 3 query rows"):
        attn(torch.randn(3, D), JaggedTensor(values=values, lengths=lens))
    with pytest.raises(ValueError, match=r"query must be \[B, 8\]"):
        attn(torch.randn(2, D + 1), JaggedTensor(values=values, lengths=lens))
    with pytest.raises(ValueError, match=r"keys.values\(\) must be \[N, 8\]"):
        attn(query, JaggedTensor(values=torch.randn(3, 4), lengths=lens))
    with pytest.raises(ValueError, match="row 1 has -1"):
        attn(query, JaggedTensor(values=values[:1], lengths=torch.tensor([2, -1])))


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="normalization must be one of"):
        JaggedTargetAttention(D, normalization="sparsemax")
    with pytest.raises(ValueError, match="activation must be one of"):
        JaggedTargetAttention(D, activation="gelu")
