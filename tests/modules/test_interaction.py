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


def _two_dim_collections():
    from torchrec import EmbeddingCollection, EmbeddingConfig

    torch.manual_seed(0)
    # torchrec's EmbeddingCollection holds one dim, so mixed dims come from two collections.
    items = EmbeddingCollection(tables=[EmbeddingConfig(
        name="item_table", embedding_dim=12, num_embeddings=50, feature_names=["item", "hist_item"])])
    cates = EmbeddingCollection(tables=[EmbeddingConfig(
        name="cate_table", embedding_dim=4, num_embeddings=7, feature_names=["cate", "hist_cate"])])
    return items, cates


def _two_dim_embeddings(items, cates, lengths):
    kjt = toy_batch(lengths).sequence_features.to_dict()
    from torchrec import KeyedJaggedTensor

    def sub(keys):
        return KeyedJaggedTensor.from_jt_dict({k: kjt[k] for k in keys})

    return {**items(sub(["item", "hist_item"])), **cates(sub(["cate", "hist_cate"]))}


def test_group_mixes_embedding_dims() -> None:
    items, cates = _two_dim_collections()
    emb = _two_dim_embeddings(items, cates, [3, 0, 2])
    din = DINInteraction.from_collections(TOY_GROUPS, [items, cates], hidden_units=(8,))
    assert din.group_dims == [16] and din.output_dim == 16
    out = din(emb)
    query = torch.cat([emb["item"].values(), emb["cate"].values()], 1)
    keys = JaggedTensor(values=torch.cat([emb["hist_item"].values(),
                                          emb["hist_cate"].values()], 1),
                        lengths=emb["hist_item"].lengths())
    torch.testing.assert_close(out, din.attention[0](query, keys))
    torch.testing.assert_close(torch.jit.script(din)(emb), out)


def test_dim_mismatch_names_feature_table_and_both_dims() -> None:
    items, cates = _two_dim_collections()
    emb = _two_dim_embeddings(items, cates, [3, 0, 2])
    dims = {"item": 12, "hist_item": 12, "cate": 8, "hist_cate": 8}
    tables = {"item": "item_table", "hist_item": "item_table", "cate": "cate_table",
              "hist_cate": "cate_table"}
    din = DINInteraction(TOY_GROUPS, dims, feature_tables=tables)
    with pytest.raises(ValueError, match=r"feature 'cate' \(table 'cate_table'\) has embeddings "
                                         r"of shape \[3, 4\], but the group was built for "
                                         r"embedding dim 8"):
        din(emb)
    with pytest.raises(ValueError, match=r"candidate feature 'item' \(table 'item_table'\) has "
                                         r"dim 12 and history feature 'hist_item' \(table "
                                         r"'item_table'\) has dim 6"):
        DINInteraction(TOY_GROUPS, {**dims, "hist_item": 6}, feature_tables=tables)
    with pytest.raises(ValueError, match=r"no dim for feature\(s\) \['hist_cate'\]"):
        DINInteraction(TOY_GROUPS, {k: v for k, v in dims.items() if k != "hist_cate"})


def test_history_from_an_embedding_bag_collection_is_refused_with_the_fix() -> None:
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    ec, _ = toy_collections()
    bags = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        name="item_bag", embedding_dim=8, num_embeddings=50, feature_names=["hist_item"])])
    with pytest.raises(ValueError, match=r"'hist_item' \(table 'item_bag'\) comes from an "
                                         r"EmbeddingBagCollection.*need an EmbeddingCollection"):
        DINInteraction.from_collections(
            [AttentionGroup("g", ["item"], ["hist_item"])], [ec, bags])
    # At run time: a pooled [B, D] tensor where a JaggedTensor should be.
    batch = toy_batch([2, 1])
    emb = dict(ec(batch.sequence_features))
    from torchrec import KeyedJaggedTensor

    hist = batch.sequence_features.to_dict()["hist_item"]
    emb["hist_item"] = bags(KeyedJaggedTensor.from_jt_dict({"hist_item": hist})).to_dict()["hist_item"]
    din = DINInteraction([AttentionGroup("g", ["item"], ["hist_item"])], 8)
    with pytest.raises(ValueError, match="is a Tensor, not a JaggedTensor: it comes from an "
                                         "EmbeddingBagCollection"):
        din(emb)


def test_candidates_shared_by_groups_appear_once() -> None:
    from torchrec.modules.embedding_configs import EmbeddingConfig
    from torchrec.modules.embedding_modules import EmbeddingCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from torchrec_din import AttentionGroup, DINInteraction, SumPoolingInteraction

    ec = EmbeddingCollection(tables=[
        EmbeddingConfig(name="item", embedding_dim=8, num_embeddings=20,
                        feature_names=["item", "click_item", "buy_item"]),
        EmbeddingConfig(name="cate", embedding_dim=8, num_embeddings=5,
                        feature_names=["cate", "click_cate"])])
    groups = [AttentionGroup("clicks", ["item", "cate"], ["click_item", "click_cate"]),
              AttentionGroup("buys", ["item"], ["buy_item"])]
    kjt = KeyedJaggedTensor(keys=["item", "cate", "click_item", "click_cate", "buy_item"],
                            values=torch.tensor([1, 2, 3, 4, 5, 6, 1, 2, 9]),
                            lengths=torch.tensor([1, 1, 1, 1, 2, 0, 2, 0, 0, 1]))
    emb = ec(kjt)
    for cls in (DINInteraction, SumPoolingInteraction):
        module = cls.from_collections(groups, [ec])
        cand = module.candidates(emb)
        assert cand.shape == (2, 16) and module.candidate_dim == 16  # item + cate, once
        torch.testing.assert_close(cand, torch.cat([emb["item"].values(),
                                                    emb["cate"].values()], 1))
        assert module(emb).shape == (2, module.output_dim) and module.output_dim == 24


def test_merge_embeddings_survives_tracing_with_collections_as_leaves() -> None:
    """TrainPipelineSparseDist traces with the (sharded) collections as leaves: a dict
    unpacking of their outputs fails there, merge_embeddings does not."""
    import torch.fx
    from torchrec.modules.embedding_configs import EmbeddingConfig
    from torchrec.modules.embedding_modules import EmbeddingCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from torchrec_din import AttentionGroup, DINInteraction
    from torchrec_din.modules import merge_embeddings

    class Ranker(torch.nn.Module):
        def __init__(self, merged: bool) -> None:
            super().__init__()
            self.merged = merged
            self.items = EmbeddingCollection(tables=[EmbeddingConfig(
                name="item", embedding_dim=32, num_embeddings=20,
                feature_names=["item", "hist_item"])])
            self.cates = EmbeddingCollection(tables=[EmbeddingConfig(
                name="cate", embedding_dim=8, num_embeddings=5,
                feature_names=["cate", "hist_cate"])])
            self.din = DINInteraction.from_collections(
                [AttentionGroup("g", ["item", "cate"], ["hist_item", "hist_cate"])],
                [self.items, self.cates], validate_inputs=False)

        def forward(self, a: KeyedJaggedTensor, b: KeyedJaggedTensor) -> torch.Tensor:
            if self.merged:
                emb = self.din.merge([self.items(a), self.cates(b)])
            else:
                emb = {**self.items(a), **self.cates(b)}
            return self.din(emb)

    class LeafTracer(torch.fx.Tracer):  # the pipeline's view: collections are leaves
        def is_leaf_module(self, m: torch.nn.Module, name: str) -> bool:
            return isinstance(m, EmbeddingCollection) or super().is_leaf_module(m, name)

    with pytest.raises(Exception, match="cannot be iterated"):
        LeafTracer().trace(Ranker(merged=False))
    torch.manual_seed(0)
    model = Ranker(merged=True)
    graph = torch.fx.GraphModule(model, LeafTracer().trace(model))
    a = KeyedJaggedTensor(keys=["item", "hist_item"], values=torch.tensor([1, 2, 3, 4]),
                          lengths=torch.tensor([1, 1, 2, 0]))
    b = KeyedJaggedTensor(keys=["cate", "hist_cate"], values=torch.tensor([1, 2, 3, 4]),
                          lengths=torch.tensor([1, 1, 2, 0]))
    torch.testing.assert_close(graph(a, b), model(a, b))
    assert graph(a, b).shape == (2, 40)
    assert model.din.collection_features == [["item", "hist_item"], ["cate", "hist_cate"]]
    merged = merge_embeddings([model.items(a), model.cates(b)], [["hist_item"], ["cate"]])
    assert list(merged) == ["hist_item", "cate"]
    with pytest.raises(ValueError, match=r"feature\(s\) \['cate', 'hist_cate'\] are in no "
                                         r"collection passed; the 1 collection\(s\) hold "
                                         r"\[\['hist_item', 'item'\]\]"):
        DINInteraction.from_collections(
            [AttentionGroup("g", ["item", "cate"], ["hist_item", "hist_cate"])], [model.items])
