"""Embedding dims that differ within one attention group, trained with TorchRec's pipeline.

    .venv/bin/torchrun --nproc_per_node 2 examples/mixed_dims.py     # CPU, gloo

Items get 32-wide embeddings and categories 8-wide, so the attention's query and keys are 40
wide. TorchRec's EmbeddingCollection holds one dim per collection, so the two id spaces live
in two collections, each with its own KJT in a ``FeatureBatch``. ``DINInteraction.merge``
joins the two collections' outputs into the one dict the attention reads, in a way that
``TrainPipelineSparseDist`` can trace (it keeps the sharded collections as leaves, whose
outputs cannot be unpacked with ``{**a, **b}``). The README's recipe is this file's
``MixedDimRanker``; ``tests/distributed/test_mixed_dims.py`` trains it on 2 ranks with the
pipeline and checks it equal to the unsharded model.
"""

import os
from typing import Iterator, Tuple

import torch
import torch.distributed as dist
from torch import nn, Tensor
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
)
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.mlp import MLP

from torchrec_din import AttentionGroup, DINInteraction
from torchrec_din.batch import FeatureBatch
from torchrec_din.distributed import dense_parameters, make_sharders, manual_plan, shard, \
    sync_buffers

ITEMS, CATES, USERS = 500, 20, 100


class MixedDimRanker(nn.Module):
    """Candidate item (32) + category (8) against the click history of both, user bag, dense.

    Inputs (a ``FeatureBatch``): ``sparse_features["items"]`` (KJT: item, hist_item),
    ``["cates"]`` (KJT: cate, hist_cate), ``["user"]`` (KJT: user), ``dense_features``
    [B, 2], ``labels`` [B]. Returns (loss, (loss, logits, labels)).
    """

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        super().__init__()
        self.ec_items = EmbeddingCollection(tables=[
            EmbeddingConfig(name="item", embedding_dim=32, num_embeddings=ITEMS,
                            feature_names=["item", "hist_item"])], device=device)
        self.ec_cates = EmbeddingCollection(tables=[
            EmbeddingConfig(name="cate", embedding_dim=8, num_embeddings=CATES,
                            feature_names=["cate", "hist_cate"])], device=device)
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="user", embedding_dim=8, num_embeddings=USERS,
                               feature_names=["user"])], device=device)
        self.din = DINInteraction.from_collections(
            [AttentionGroup("clicks", ["item", "cate"], ["hist_item", "hist_cate"])],
            [self.ec_items, self.ec_cates], activation="dice", device=device)
        self.over_arch = MLP(self.din.candidate_dim + self.din.output_dim + 8 + 2, [32, 16],
                             device=device)
        self.final = nn.Linear(16, 1, device=device)

    def forward(self, batch: FeatureBatch) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        sparse = batch.sparse_features
        emb = self.din.merge([self.ec_items(sparse["items"]), self.ec_cates(sparse["cates"])])
        user = self.ebc(sparse["user"])["user"]
        x = torch.cat([self.din.candidates(emb), self.din(emb), user, batch.dense_features], 1)
        logits = self.final(self.over_arch(x)).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


def make_batch(lengths: Tuple[int, ...], seed: int) -> FeatureBatch:
    """Samples with these history lengths (0 allowed); label: the candidate's category was
    clicked before, with noise."""
    g = torch.Generator().manual_seed(seed)
    b, n = len(lengths), sum(lengths)
    item, hist_item = torch.randint(0, ITEMS, (b,), generator=g), torch.randint(
        0, ITEMS, (n,), generator=g)
    cate, hist_cate = item % CATES, hist_item % CATES
    owner = torch.repeat_interleave(torch.arange(b), torch.tensor(lengths, dtype=torch.long))
    seen = torch.zeros(b).index_add_(0, owner, (hist_cate == cate[owner]).float())
    labels = ((seen > 0).float() + 0.5 * torch.rand(b, generator=g) > 0.7).float()
    one, hist = torch.ones(b, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)
    return FeatureBatch(
        sparse_features={
            "items": KeyedJaggedTensor.from_lengths_sync(
                ["item", "hist_item"], torch.cat([item, hist_item]), torch.cat([one, hist])),
            "cates": KeyedJaggedTensor.from_lengths_sync(
                ["cate", "hist_cate"], torch.cat([cate, hist_cate]), torch.cat([one, hist])),
            "user": KeyedJaggedTensor.from_lengths_sync(
                ["user"], torch.randint(0, USERS, (b,), generator=g), one),
        },
        dense_features=torch.randn(b, 2, generator=g),
        labels=labels)


def batches(steps: int, rank: int) -> Iterator[FeatureBatch]:
    g = torch.Generator().manual_seed(rank)
    for step in range(steps):
        lengths = tuple(int(x) for x in torch.randint(0, 12, (64,), generator=g))
        yield make_batch(lengths, seed=1000 * rank + step)


def main(steps: int = 100) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = MixedDimRanker()
    sharders = make_sharders("rowwise_adagrad", 0.05)
    plan = manual_plan(model, {"item": "row_wise", "cate": "table_wise", "user": "table_wise"},
                       world, sharders)
    dmp = shard(model, plan, sharders)
    opt = torch.optim.Adam([p for _, p in dense_parameters(dmp)], lr=3e-3)
    pipeline = TrainPipelineSparseDist(dmp, opt, device)
    losses, it = [], batches(steps, rank)
    while True:
        try:
            losses.append(float(pipeline.progress(it)[0]))
        except StopIteration:
            break
    pipeline.detach()  # the model's sharded modules run outside the pipeline again
    sync_buffers(dmp)  # one model on every rank: Dice statistics averaged
    if rank == 0:
        print(f"[train] {len(losses)} steps on {world} ranks: loss first 10 "
              f"{sum(losses[:10]) / 10:.4f} -> last 10 {sum(losses[-10:]) / 10:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
