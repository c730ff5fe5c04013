"""Shard DIN with TorchRec in your own training loop.

    .venv/bin/torchrun --nproc_per_node 2 examples/sharded_din.py     # CPU, gloo

Builds DIN, asks TorchRec's planner for a plan (with the CPU constraints: sequence tables on
the fused kernel, never data_parallel), wraps it in DistributedModelParallel, and trains a few
steps: the sharded tables update with their fused optimizer in the backward pass, the dense
part with a normal optimizer over the remaining parameters.
"""

import os

import torch
import torch.distributed as dist

from torchrec_din import DINTrain
from torchrec_din.data.synthetic import generate_synthetic
from torchrec_din.data.loader import DINDataset, make_loader
from torchrec_din.distributed import dense_parameters, make_sharders, shard
from torchrec_din.distributed import planner_constraints
from torchrec_din.build import build_model
from torchrec_din.config import load_config
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology


def main() -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")

    table = generate_synthetic(num_users=2000, num_items=5000, num_cates=50, seed=0)
    config = load_config("configs/synthetic_din.yaml")
    torch.manual_seed(0)
    model = DINTrain(build_model(table.vocab, config, device=torch.device("meta")))

    sharders = make_sharders("adagrad", learning_rate=0.05, device_type=device.type)
    # Pooling factors: a history feature looks up its whole history per sample.
    mean = float(table.summary()["train"]["mean_history"])
    constraints = planner_constraints(model, {"hist_item": mean, "hist_cate": mean}, device.type)
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device=device.type),
        constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    if rank == 0:
        print(plan)
    dmp = shard(model, plan, sharders, device=device)  # meta parameters get materialised here
    dense_opt = torch.optim.Adam([p for _, p in dense_parameters(dmp)], lr=1e-3)

    # Each rank reads its own part of the data.
    dataset = DINDataset(table, "train", table.schema(["user"]))
    loader = make_loader(dataset, batch_size=256, shuffle=True, seed=rank)
    for step, batch in enumerate(loader):
        loss, _ = dmp(batch.to(device))
        dense_opt.zero_grad()
        loss.backward()  # the sharded tables are updated here (fused optimizer)
        dense_opt.step()
        if step % 10 == 0 and rank == 0:
            print(f"step {step}: loss {loss.item():.4f}")
        if step == 30:
            break
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
