"""DIN inside your own TorchRec ranking model: shard, pipeline, train, quantize, script.

    .venv/bin/torchrun --nproc_per_node 2 examples/your_own_model.py     # CPU, gloo
    .venv/bin/torchrun --nproc_per_node 2 examples/your_own_model.py --steps 200 --out /tmp/ranker

The model is written the way a TorchRec user writes one: an EmbeddingBagCollection for user
and context features, dense features, and an EmbeddingCollection for the candidate item and
two behaviour sequences, clicks and purchases, that share the item table. DINInteraction turns
the two jagged sequences into two interest vectors (no padding). Then:

1. TorchRec's planner shards the tables (told each sequence's mean length, so its cost
   estimates count whole histories), DistributedModelParallel wraps the model and
   TrainPipelineSparseDist(apply_jit=True) trains it, with the DIN part TorchScripted.
2. Rank 0 gathers the trained weights into an unsharded model and runs TorchRec's inference
   recipe: int8 tables (quantize_inference_model), torchrec.fx trace, torch.jit.script. The
   scripted scores are checked equal to the eager quantized model's, row by row.
"""

import argparse
import copy
import os
from typing import Dict, Iterator, List, Tuple

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
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.fx import symbolic_trace
from torchrec.inference.modules import quantize_inference_model
from torchrec.modules.mlp import MLP

from torchrec_din import AttentionGroup, DINInteraction
from torchrec_din.batch import DINBatch
from torchrec_din.distributed import (
    dense_parameters,
    gather_state_dict,
    make_sharders,
    planner_constraints,
    shard,
    sync_buffers,
    use_pipeline_jit_model,
)

ITEMS, CATES, USERS, HOURS, DENSE = 2000, 40, 500, 24, 3
SEQUENCE_KEYS = ["item", "cate", "click_item", "click_cate", "buy_item"]


class MyRanker(nn.Module):
    """A ranking model of one's own, with DIN's target attention over two behaviour sequences.

    Inputs (a ``DINBatch``): ``sequence_features`` (KJT: item, cate: one id per sample;
    click_item, click_cate: the click sequence; buy_item: the purchase sequence),
    ``pooled_features`` (KJT: user, hour), ``dense_features`` [B, 3], ``labels`` [B].
    Returns (loss, (loss, logits, labels)), as TrainPipelineSparseDist expects.
    """

    def __init__(self, device: torch.device = torch.device("cpu"), dim: int = 16) -> None:
        super().__init__()
        self.user_context = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="user", embedding_dim=dim, num_embeddings=USERS,
                               feature_names=["user"]),
            EmbeddingBagConfig(name="hour", embedding_dim=dim, num_embeddings=HOURS,
                               feature_names=["hour"]),
        ], device=device)
        # One item table serves the candidate and both sequences.
        self.behaviours = EmbeddingCollection(tables=[
            EmbeddingConfig(name="item", embedding_dim=dim, num_embeddings=ITEMS,
                            feature_names=["item", "click_item", "buy_item"]),
            EmbeddingConfig(name="cate", embedding_dim=dim, num_embeddings=CATES,
                            feature_names=["cate", "click_cate"]),
        ], device=device)
        self.din = DINInteraction.from_collections(
            [AttentionGroup("clicks", ["item", "cate"], ["click_item", "click_cate"]),
             AttentionGroup("purchases", ["item"], ["buy_item"])],
            [self.behaviours], hidden_units=(32, 16), activation="dice",
            normalization="softmax",
            # The loader's batches are trusted here: no host sync in the training step.
            validate_inputs=False)
        self.dense_arch = MLP(DENSE, [dim], device=device)
        width = 2 * dim + self.din.output_dim + 2 * dim + dim  # candidate, interests, bags, dense
        self.over_arch = MLP(width, [64, 32], device=device)
        self.final = nn.Linear(32, 1, device=device)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def score(self, sequence_features: KeyedJaggedTensor, pooled_features: KeyedJaggedTensor,
              dense_features: Tensor) -> Tensor:
        """Logits [B]."""
        embeddings = self.behaviours(sequence_features)
        bags = self.user_context(pooled_features).to_dict()
        candidate = torch.cat([embeddings["item"].values(), embeddings["cate"].values()], 1)
        x = torch.cat([candidate, self.din(embeddings), bags["user"], bags["hour"],
                       self.dense_arch(dense_features)], dim=1)
        return self.final(self.over_arch(x)).squeeze(1)

    def score_grouped(self, sequence_features: KeyedJaggedTensor,
                      pooled_features: KeyedJaggedTensor, dense_features: Tensor) -> Tensor:
        """Logits [K] for K_u candidates per user against one history per user (serving): the
        candidate features carry K_u ids per user, histories, bags and dense rows one per user
        (``torchrec_din.grouped.request_kjt`` builds the KJT). Each history is looked up and
        its candidate-independent attention part computed once; per-user rows are spread over
        the candidates with ``history_of_candidates``. Equal to ``score`` on one row per
        candidate."""
        embeddings = self.behaviours(sequence_features)
        rows = self.din.history_of_candidates(embeddings)  # [K]: the user of each candidate
        bags = self.user_context(pooled_features).to_dict()
        x = torch.cat([self.din.candidates_grouped(embeddings),  # item, cate: each once
                       self.din.forward_grouped(embeddings),
                       bags["user"].index_select(0, rows), bags["hour"].index_select(0, rows),
                       self.dense_arch(dense_features).index_select(0, rows)], dim=1)
        return self.final(self.over_arch(x)).squeeze(1)

    def forward(self, batch: DINBatch) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        logits = self.score(batch.sequence_features, batch.pooled_features,
                            batch.dense_features)
        loss = self.loss_fn(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


class Scorer(nn.Module):
    """Serving entry point: the trained model's ``score`` on plain KJT / tensor inputs."""

    def __init__(self, model: MyRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, sequence_features: KeyedJaggedTensor, pooled_features: KeyedJaggedTensor,
                dense_features: Tensor) -> Tensor:
        return self.model.score(sequence_features, pooled_features, dense_features)


class GroupedScorer(nn.Module):
    """Serving entry point for K_u candidates per user: the model's ``score_grouped``;
    exports the PT2 way (``torchrec_din.export.export_model``), candidates per user dynamic."""

    def __init__(self, model: MyRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, sequence_features: KeyedJaggedTensor, pooled_features: KeyedJaggedTensor,
                dense_features: Tensor) -> Tensor:
        return self.model.score_grouped(sequence_features, pooled_features, dense_features)


def make_batch(batch_size: int, generator: torch.Generator) -> DINBatch:
    """Synthetic logs: a user clicks and buys items; a candidate whose category the user
    clicked before is more likely to be clicked (the signal DIN's attention can find)."""
    g = generator
    clicks = torch.randint(0, 30, (batch_size,), generator=g)
    buys = torch.randint(0, 4, (batch_size,), generator=g)
    click_item = torch.randint(0, ITEMS, (int(clicks.sum()),), generator=g)
    buy_item = torch.randint(0, ITEMS, (int(buys.sum()),), generator=g)
    item = torch.randint(0, ITEMS, (batch_size,), generator=g)
    cate, click_cate = item % CATES, click_item % CATES
    # Label: did the user click the candidate's category before? (plus noise)
    owner = torch.repeat_interleave(torch.arange(batch_size), clicks)
    seen = torch.zeros(batch_size).index_add_(0, owner, (click_cate == cate[owner]).float())
    labels = ((seen > 0).float() * 0.8 + torch.rand(batch_size, generator=g) * 0.4 > 0.6).float()
    one = torch.ones(batch_size, dtype=torch.long)
    sequence = KeyedJaggedTensor.from_lengths_sync(
        keys=SEQUENCE_KEYS,
        values=torch.cat([item, cate, click_item, click_cate, buy_item]),
        lengths=torch.cat([one, one, clicks, clicks, buys]))
    pooled = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "hour"],
        values=torch.cat([torch.randint(0, USERS, (batch_size,), generator=g),
                          torch.randint(0, HOURS, (batch_size,), generator=g)]),
        lengths=torch.cat([one, one]))
    return DINBatch(sequence, pooled, torch.randn(batch_size, DENSE, generator=g), labels)


def batches(steps: int, batch_size: int, seed: int) -> Iterator[DINBatch]:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield make_batch(batch_size, g)


def train_sharded(args: argparse.Namespace, rank: int, world: int,
                  device: torch.device) -> Tuple[Dict[str, Tensor], List[float]]:
    torch.manual_seed(0)
    model = MyRanker(device=torch.device("meta"))
    # Mean ids per sample of each sequence feature, measured on the data, for the planner.
    sample = make_batch(1024, torch.Generator().manual_seed(123)).sequence_features
    mean_lengths = {k: float(sample[k].lengths().float().mean()) for k in SEQUENCE_KEYS}
    sharders = make_sharders("rowwise_adagrad", 0.05, device.type)
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device=device.type),
        constraints=planner_constraints(model, mean_lengths, device.type))
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    if rank == 0:
        print(plan)
    dmp = shard(model, plan, sharders, device=device)
    opt = torch.optim.Adam([p for _, p in dense_parameters(dmp)], lr=3e-3)
    pipeline = TrainPipelineSparseDist(dmp, opt, device, apply_jit=True)
    losses: List[float] = []
    it = batches(args.steps, args.batch_size, seed=1000 + rank)  # each rank its own data
    while True:
        try:
            loss, _, _ = pipeline.progress(it)
        except StopIteration:
            break
        # TorchRec 1.8 builds the scripted model on the first batch but keeps running the
        # eager one; this puts the scripted one in its place (see its docstring).
        use_pipeline_jit_model(dmp)
        losses.append(float(loss))
    # apply_jit scripted the non-sharded children of the model, DIN included.
    din = dmp.module.din
    if not isinstance(din, torch.jit.ScriptModule):
        raise RuntimeError(f"TrainPipelineSparseDist(apply_jit=True) left DIN unscripted: "
                           f"{type(din).__name__}")
    if rank == 0:
        print(f"[train] {len(losses)} steps on {world} ranks; DIN part scripted by the pipeline "
              f"({type(din).__name__}); loss first 10 {sum(losses[:10]) / 10:.4f} -> "
              f"last 10 {sum(losses[-10:]) / 10:.4f}")
    # DDP does not broadcast buffers under DMP: average the Dice statistics so that every
    # rank, and the gathered model, is one model.
    sync_buffers(dmp)
    return gather_state_dict(dmp), losses


def export_for_inference(state: Dict[str, Tensor], out: str) -> None:
    model = MyRanker()
    model.load_state_dict(state)
    fp32 = Scorer(model).eval()
    int8 = quantize_inference_model(copy.deepcopy(fp32))  # int8 tables, fp32 dense layers
    # TorchRec's inference recipe: trace with torchrec.fx, then script. Trace a copy: tracing
    # leaves fx proxies cached inside the quantized collections.
    scripted = torch.jit.script(symbolic_trace(copy.deepcopy(int8)))
    test = make_batch(512, torch.Generator().manual_seed(7))
    args = (test.sequence_features, test.pooled_features, test.dense_features)
    with torch.no_grad():
        eager_int8, eager_fp32, served = int8(*args), fp32(*args), scripted(*args)
    torch.testing.assert_close(served, eager_int8, rtol=1e-5, atol=1e-5)
    print(f"[serve] int8 + fx + TorchScript scores equal eager int8 on {len(served)} rows "
          f"(max diff {float((served - eager_int8).abs().max()):.2e}); int8 vs fp32 max diff "
          f"{float((eager_int8 - eager_fp32).abs().max()):.2e}; held-out AUC fp32 "
          f"{_auc(eager_fp32, test.labels):.4f}, int8 served {_auc(served, test.labels):.4f}")
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "ranker_int8.pt")
        torch.jit.save(scripted, path)
        print(f"[serve] saved {path}")


def _auc(scores: Tensor, labels: Tensor) -> float:
    ranks = torch.empty_like(scores).scatter_(0, scores.argsort(), torch.arange(
        1, len(scores) + 1, dtype=scores.dtype))
    pos = labels > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="", help="folder for the scripted int8 model")
    args = parser.parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    state, _ = train_sharded(args, rank, world, device)
    if rank == 0:
        export_for_inference({k: v.cpu() for k, v in state.items()}, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
