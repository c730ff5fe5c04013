import pytest
import torch
from hypothesis import given, strategies as st
from torchrec.fx import symbolic_trace
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din import DIN, DINTrain
from torchrec_din.data import DINBatch
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections

KEYS = ["item", "cate", "hist_item", "hist_cate"]
ROWS = {"item": 50, "cate": 7, "hist_item": 50, "hist_cate": 7}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    return DIN(ec, TOY_GROUPS, ebc, dense_in_features=2)


def _kjt(values, lengths, keys=KEYS):
    return KeyedJaggedTensor(keys=keys, values=torch.tensor(values, dtype=torch.long),
                             lengths=torch.tensor(lengths, dtype=torch.long))


def _call(model, seq, pooled=None, dense=None):
    b = toy_batch([1, 2, 0])
    model(seq, b.pooled_features if pooled is None else pooled,
          b.dense_features if dense is None else dense)


GOOD_LENGTHS = [1, 1, 1, 1, 1, 1, 1, 2, 0, 1, 2, 0]
GOOD_VALUES = [1, 2, 3, 0, 1, 2, 4, 5, 6, 0, 1, 2]


def test_good_batch_passes(model) -> None:
    _call(model, _kjt(GOOD_VALUES, GOOD_LENGTHS))


def test_out_of_range_id_names_feature_table_value_and_row(model) -> None:
    values = list(GOOD_VALUES)
    values[8] = 50  # hist_item, second behaviour of batch row 1
    with pytest.raises(ValueError, match=r"'hist_item' \(table 'item', 50 rows\) has id 50 at "
                                         r"batch row 1"):
        _call(model, _kjt(values, GOOD_LENGTHS))
    values = list(GOOD_VALUES)
    values[4] = -3  # cate of batch row 1
    with pytest.raises(ValueError, match=r"'cate' \(table 'cate', 7 rows\) has id -3 at batch row 1"):
        _call(model, _kjt(values, GOOD_LENGTHS))


def test_lengths_not_matching_values(model) -> None:
    with pytest.raises(ValueError, match="lengths sum to 12 but values holds 11 ids"):
        _call(model, _kjt(GOOD_VALUES[:-1], GOOD_LENGTHS))


def test_missing_and_unexpected_keys(model) -> None:
    keys = ["item", "cate", "hist_item", "hist_genre"]
    with pytest.raises(ValueError, match=r"missing feature\(s\) \['hist_cate'\], unexpected "
                                         r"feature\(s\) \['hist_genre'\]"):
        _call(model, _kjt(GOOD_VALUES, GOOD_LENGTHS, keys))


def test_candidate_with_two_ids(model) -> None:
    lengths = list(GOOD_LENGTHS)
    lengths[1], lengths[2] = 2, 0  # item: row 1 has two ids, row 2 none
    with pytest.raises(ValueError, match="candidate feature 'item' \\(table 'item'\\) must have exactly one id "
                                         "per sample; row 1 has 2"):
        _call(model, _kjt(GOOD_VALUES, lengths))


def test_non_finite_dense_and_bad_labels(model) -> None:
    dense = torch.zeros(3, 2)
    dense[2, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite value nan at batch row 2, column 1"):
        _call(model, _kjt(GOOD_VALUES, GOOD_LENGTHS), dense=dense)
    b = toy_batch([1, 2, 0])
    bad = DINBatch(b.sequence_features, b.pooled_features, b.dense_features,
                   torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="labels must be 0 or 1; batch row 1 has 0.5"):
        DINTrain(model)(bad)


def test_empty_batch(model) -> None:
    with pytest.raises(ValueError, match="empty batch"):
        _call(model, _kjt([], []))


def test_pooled_out_of_range(model) -> None:
    pooled = KeyedJaggedTensor(keys=["user"], values=torch.tensor([1, 20, 3]),
                               lengths=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"'user' \(table 'user', 20 rows\) has id 20 at batch row 1"):
        _call(model, _kjt(GOOD_VALUES, GOOD_LENGTHS), pooled=pooled)


def test_validation_can_be_switched_off_and_traces(model) -> None:
    traced = symbolic_trace(model)
    with pytest.raises(ValueError, match="has id 50"):
        values = list(GOOD_VALUES)
        values[8] = 50
        b = toy_batch([1, 2, 0])
        traced(_kjt(values, GOOD_LENGTHS), b.pooled_features, b.dense_features)
    ec, ebc = toy_collections()
    off = DIN(ec, TOY_GROUPS, ebc, dense_in_features=2, validate_inputs=False)
    _call(off, _kjt(GOOD_VALUES, GOOD_LENGTHS))


@given(
    lengths=st.lists(st.integers(-1, 3), min_size=12, max_size=12),
    values=st.lists(st.integers(-2, 55), min_size=0, max_size=20),
)
def test_fuzz_malformed_kjts_never_pass_silently(model, lengths, values) -> None:
    """Anything the validation lets through must be a well-formed, in-range batch."""
    kjt = _kjt(values, lengths)
    try:
        _call(model, kjt)
    except ValueError:
        return  # rejected with a clear error
    assert min(lengths) >= 0 and sum(lengths) == len(values)
    offset = 0
    for k, key in enumerate(KEYS):
        n = sum(lengths[3 * k:3 * k + 3])
        assert all(0 <= v < ROWS[key] for v in values[offset:offset + n])
        offset += n
    assert lengths[0:6] == [1] * 6 and lengths[6:9] == lengths[9:12]


@pytest.mark.parametrize("validate", [True, False])
def test_pooled_batch_size_must_match_the_sequence_batch(validate) -> None:
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    model = DIN(ec, TOY_GROUPS, ebc, dense_in_features=2, validate_inputs=validate)
    b, other = toy_batch([1, 2, 0]), toy_batch([1, 2])
    with pytest.raises(ValueError, match="pooled_features: feature 'user' has 2 rows .* but "
                                         "sequence_features hold 3 samples"):
        model(b.sequence_features, other.pooled_features, b.dense_features)


def test_bool_labels_and_meta_tensors_are_named(model) -> None:
    b = toy_batch([1, 2, 0])
    with pytest.raises(ValueError, match="labels must be a float tensor .* got dtype "
                                         "torch.bool; convert them with labels.float()"):
        DINTrain(model)(DINBatch(b.sequence_features, b.pooled_features, b.dense_features,
                                 b.labels.bool()))
    meta = KeyedJaggedTensor(keys=KEYS, values=torch.zeros(8, dtype=torch.long, device="meta"),
                             lengths=torch.ones(12, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="sequence_features is on the meta device"):
        model(meta, b.pooled_features, b.dense_features)
