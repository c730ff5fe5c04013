"""Small random TorchRec inputs for tests, examples and docs."""

from typing import List, Optional, Sequence, Tuple

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.batch import DINBatch
from torchrec_din.modules.interaction import AttentionGroup

TOY_GROUPS: List[AttentionGroup] = [
    AttentionGroup("behaviour", ["item", "cate"], ["hist_item", "hist_cate"])
]


def toy_collections(
    embedding_dim: int = 8, num_items: int = 50, num_cates: int = 7, num_users: int = 20
) -> Tuple[EmbeddingCollection, EmbeddingBagCollection]:
    """An EmbeddingCollection with item/cate tables shared by candidate and history, and an
    EmbeddingBagCollection with a user table."""
    ec = EmbeddingCollection(
        tables=[
            EmbeddingConfig(name="item", embedding_dim=embedding_dim,
                            num_embeddings=num_items, feature_names=["item", "hist_item"]),
            EmbeddingConfig(name="cate", embedding_dim=embedding_dim,
                            num_embeddings=num_cates, feature_names=["cate", "hist_cate"]),
        ]
    )
    ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name="user", embedding_dim=4, num_embeddings=num_users,
                                   feature_names=["user"])]
    )
    return ec, ebc


def toy_batch(
    history_lengths: Sequence[int],
    num_items: int = 50,
    num_cates: int = 7,
    num_users: int = 20,
    dense_in_features: int = 2,
    seed: int = 0,
    labels: Optional[torch.Tensor] = None,
) -> DINBatch:
    """A random DINBatch with the given history length per sample."""
    g = torch.Generator().manual_seed(seed)
    b = len(history_lengths)
    hist = torch.tensor(list(history_lengths), dtype=torch.long)
    n = int(hist.sum())
    ones = torch.ones(b, dtype=torch.long)
    seq = KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "cate", "hist_item", "hist_cate"],
        values=torch.cat([
            torch.randint(0, num_items, (b,), generator=g),
            torch.randint(0, num_cates, (b,), generator=g),
            torch.randint(0, num_items, (n,), generator=g),
            torch.randint(0, num_cates, (n,), generator=g),
        ]),
        lengths=torch.cat([ones, ones, hist, hist]),
    )
    pooled = KeyedJaggedTensor.from_lengths_sync(
        keys=["user"], values=torch.randint(0, num_users, (b,), generator=g), lengths=ones
    )
    if labels is None:
        labels = torch.randint(0, 2, (b,), generator=g).float()
    return DINBatch(seq, pooled, torch.randn(b, dense_in_features, generator=g), labels)
