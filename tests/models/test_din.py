import pytest
import torch
from torchrec.fx import symbolic_trace

from torchrec_din import BaseModel, DIN, DINTrain
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections

LENGTHS = [3, 0, 1, 12, 2, 0]


def _models():
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    yield "din", DIN(ec, TOY_GROUPS, ebc, dense_in_features=2)
    ec, ebc = toy_collections()
    yield "din_dice_softmax_outer", DIN(
        ec, TOY_GROUPS, ebc, dense_in_features=2, attention_activation="dice",
        attention_normalization="softmax", use_outer_product=True,
        over_arch_activation="dice", dropout=0.1)
    ec, ebc = toy_collections()
    yield "base", BaseModel(ec, TOY_GROUPS, ebc, dense_in_features=2)
    ec, _ = toy_collections()
    yield "din_no_pooled_no_dense", DIN(ec, TOY_GROUPS)


@pytest.mark.parametrize("name,model", list(_models()))
def test_forward_backward_and_fx_trace(name, model) -> None:
    batch = toy_batch(LENGTHS)
    args = (batch.sequence_features, batch.pooled_features, batch.dense_features)
    logits = model(*args)
    assert logits.shape == (len(LENGTHS),)
    logits.sum().backward()
    table_grad = model.embedding_collection.embeddings["item"].weight.grad
    assert table_grad is not None and table_grad.abs().sum() > 0
    model.eval()
    traced = symbolic_trace(model)
    torch.testing.assert_close(traced(*args), model(*args))


def test_train_wrapper_returns_dlrm_style_tuple() -> None:
    ec, ebc = toy_collections()
    model = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2))
    batch = toy_batch(LENGTHS, labels=torch.tensor([1.0, 0, 1, 0, 1, 0]))
    loss, (loss_d, logits, labels) = model(batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    torch.testing.assert_close(loss, expected)
    assert loss.requires_grad and not loss_d.requires_grad
    traced = symbolic_trace(model)
    torch.testing.assert_close(traced(batch)[0], loss)


def test_training_reduces_loss_on_fixed_batch() -> None:
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    model = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2))
    batch = toy_batch([5, 2, 0, 7, 1, 3, 4, 9], seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(30):
        loss, _ = model(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_dense_shape_error() -> None:
    ec, ebc = toy_collections()
    model = DIN(ec, TOY_GROUPS, ebc, dense_in_features=3)
    batch = toy_batch(LENGTHS)
    with pytest.raises(ValueError, match=r"dense_features must be \[B, 3\]"):
        model(batch.sequence_features, batch.pooled_features, batch.dense_features)
