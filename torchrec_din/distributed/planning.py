"""Sharding plans from the TorchRec planner for a config, on the meta device (no GPU needed)."""

import logging
import sys
from typing import Any, Dict, List, Optional

import torch
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan

from torchrec_din.distributed.sharding import make_sharders
from torchrec_din.train.builder import build_model

TABLE_KEYS = ("num_embeddings", "sharding_types", "compute_kernels")
# What works on CPU (PLATFORM_NOTES): sequence tables need the fused kernel and no
# data_parallel; the planner refuses row_wise for pooled tables on CPU.
CPU_SEQUENCE = ParameterConstraints(sharding_types=["table_wise", "row_wise", "column_wise"],
                                    compute_kernels=["fused"])
CPU_POOLED = ParameterConstraints(sharding_types=["table_wise", "data_parallel"])


def table_overrides(config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    tables = config.get("tables") or {}
    for name, spec in tables.items():
        if not isinstance(spec, dict) or any(k not in TABLE_KEYS for k in spec):
            raise ValueError(f"tables.{name} must be a mapping with keys from {list(TABLE_KEYS)}, "
                             f"got {spec!r}")
    return tables


def constraints_for(config: Dict[str, Any], sequence_tables: List[str],
                    pooled_tables: List[str], compute_device: str) -> Dict[str, ParameterConstraints]:
    """Planner constraints: CPU-safe defaults, then the config's per-table choices."""
    out: Dict[str, ParameterConstraints] = {}
    if compute_device == "cpu":
        out.update({t: CPU_SEQUENCE for t in sequence_tables})
        out.update({t: CPU_POOLED for t in pooled_tables})
    for name, spec in table_overrides(config).items():
        if "sharding_types" in spec or "compute_kernels" in spec:
            base = out.get(name, ParameterConstraints())
            out[name] = ParameterConstraints(
                sharding_types=spec.get("sharding_types", base.sharding_types),
                compute_kernels=spec.get("compute_kernels", base.compute_kernels))
    return out


def plan_for_config(config: Dict[str, Any], vocab: Dict[str, int], world_size: int,
                    compute_device: str = "cuda", local_world_size: Optional[int] = None,
                    batch_size: Optional[int] = None) -> ShardingPlan:
    """The planner's plan for the config's model, built on the meta device.

    ``config["tables"][name]["num_embeddings"]`` overrides a table's size (e.g. a
    production-sized item table). The planner logs its per-rank statistics (memory, perf)
    to the ``torchrec.distributed.planner.stats`` logger.
    """
    vocab = dict(vocab)
    for name, spec in table_overrides(config).items():
        if "num_embeddings" in spec:
            vocab[name] = int(spec["num_embeddings"])
    model = build_model(vocab, config, device=torch.device("meta"))
    sequence = [c.name for c in model.embedding_collection.embedding_configs()]
    pooled = ([c.name for c in model.embedding_bag_collection.embedding_bag_configs()]
              if model.embedding_bag_collection is not None else [])
    unknown = [t for t in table_overrides(config) if t not in sequence + pooled]
    if unknown:
        raise ValueError(f"tables {unknown} are not in the model; it has {sequence + pooled}")
    topology = Topology(world_size=world_size, compute_device=compute_device,
                        local_world_size=local_world_size or min(world_size, 8))
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=batch_size or config["train"]["batch_size"],
        constraints=constraints_for(config, sequence, pooled, compute_device))
    sharders = make_sharders(config["train"]["optimizer"], config["train"]["learning_rate"])
    return planner.plan(model, sharders)


def print_plan(config: Dict[str, Any], vocab: Dict[str, int], world_size: int,
               compute_device: str) -> ShardingPlan:
    """Plan and print the planner's statistics table and the plan."""
    stats = logging.getLogger("torchrec.distributed.planner.stats")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    stats.addHandler(handler)
    stats.setLevel(logging.INFO)
    stats.propagate = False
    try:
        plan = plan_for_config(config, vocab, world_size, compute_device)
    finally:
        stats.removeHandler(handler)
    print(plan)
    return plan
