import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din import AttentionGroup, DINInteraction, SumPoolingInteraction
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections


def _embeddings(lengths, seed=0):
    torch.manual_seed(seed)
    ec, _ = toy_collections()
    return ec(toy_batch(lengths, seed=seed).sequence_features)


def test_din_interaction_equals_attention_on_concatenated_group() -> None:
    emb = _embeddings([3, 0, 1, 5])
    torch.manual_seed(0)
    din = DINInteraction(TOY_GROUPS, embedding_dim=8, activation="dice", normalization="softmax")
    out = din(emb)
    assert out.shape == (4, 16)
    query = torch.cat([emb["item"].values(), emb["cate"].values()], 1)
    keys = JaggedTensor(
        values=torch.cat([emb["hist_item"].values(), emb["hist_cate"].values()], 1),
        lengths=emb["hist_item"].lengths(),
    )
    torch.testing.assert_close(out, din.attention[0](query, keys))
    torch.testing.assert_close(din.candidates(emb), query)


def test_two_groups_concatenate_in_order() -> None:
    emb = _embeddings([2, 1])
    groups = [AttentionGroup("items", ["item"], ["hist_item"]),
              AttentionGroup("cates", ["cate"], ["hist_cate"])]
    din = DINInteraction(groups, embedding_dim=8)
    out = din(emb)
    assert out.shape == (2, 16)
    items = din.attention[0](emb["item"].values(), emb["hist_item"])
    torch.testing.assert_close(out[:, :8], items)


def test_sum_pooling_is_history_sum() -> None:
    emb = _embeddings([2, 0, 3])
    out = SumPoolingInteraction(TOY_GROUPS, 8)(emb)
    hist = torch.cat([emb["hist_item"].values(), emb["hist_cate"].values()], 1)
    expected = torch.stack([hist[0:2].sum(0), torch.zeros(16), hist[2:5].sum(0)])
    torch.testing.assert_close(out, expected)


def test_errors_name_the_feature_and_row() -> None:
    emb = _embeddings([2, 1, 1])
    din = DINInteraction(TOY_GROUPS, 8)
    missing = dict(emb)
    del missing["hist_cate"]
    with pytest.raises(ValueError, match="'hist_cate' is missing"):
        din(missing)
    bad = dict(emb)
    item = emb["item"]
    bad["item"] = JaggedTensor(values=torch.cat([item.values(), item.values()[:1]]),
                               lengths=torch.tensor([1, 2, 1]))
    with pytest.raises(ValueError, match="candidate feature 'item'.*row 1 has 2"):
        din(bad)
    bad = dict(emb)
    cate = emb["hist_cate"]
    bad["hist_cate"] = JaggedTensor(values=cate.values(), lengths=torch.tensor([1, 2, 1]))
    with pytest.raises(ValueError, match="'hist_item' and 'hist_cate'.*row 0 has 2 vs 1"):
        din(bad)


def test_group_validation() -> None:
    with pytest.raises(ValueError, match="pair up one to one"):
        AttentionGroup("g", ["item", "cate"], ["hist_item"])
    with pytest.raises(ValueError, match="unique"):
        DINInteraction([TOY_GROUPS[0], TOY_GROUPS[0]], 8)
