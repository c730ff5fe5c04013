"""Sharding plans from the TorchRec planner for a config, on the meta device (no GPU needed)."""

import logging
import sys
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan

from torchrec_din.data.schema import FeatureSchema
from torchrec_din.distributed import (
    collection_configs,
    find_collections,
    fused_optimizers,
    make_sharders,
    planner_constraints,
)
from torchrec_din.build import build_model
from torchrec_din.config import check_tables


def table_overrides(config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The config's ``tables:`` settings, checked against its feature schema (the same
    check ``load_config`` runs, for configs built without it)."""
    config = {**config, "tables": config.get("tables") or {}}
    check_tables(config, FeatureSchema.from_config(config["features"]))
    return config["tables"]


def embedding_optimizer(train: Dict[str, Any], device_type: str) -> Tuple[str, float, str]:
    """The fused table optimizer and learning rate of a sharded run, and a note if ``auto``
    had to pick another optimizer than ``train.optimizer`` for the device ("" if not)."""
    name, lr = train["embedding_optimizer"], train["embedding_learning_rate"]
    note = ""
    if name == "auto":
        name = train["optimizer"]
        if name not in fused_optimizers(device_type):
            name, lr = "rowwise_adagrad", lr or 0.05
            note = (f"FBGEMM has no fused {train['optimizer']} on {device_type}: tables use "
                    f"rowwise_adagrad (lr {lr}); set train.embedding_optimizer to choose")
    return name, float(lr or train["learning_rate"]), note


def constraints_for(config: Dict[str, Any], model: nn.Module, mean_history: float,
                    compute_device: str) -> Dict[str, ParameterConstraints]:
    """Planner constraints for the config's model: CPU-safe defaults, history features'
    pooling factors (``mean_history``, the training data's mean history length, or
    ``tables.<name>.history_mean_length``), then the config's per-table choices."""
    tables = table_overrides(config)
    history = set(FeatureSchema.from_config(config["features"]).history_features())
    mean_lengths: Dict[str, float] = {}
    for collection in find_collections(model).values():
        for table in collection_configs(collection):
            length = float(tables.get(table.name, {}).get("history_mean_length", mean_history))
            for feature in table.feature_names:
                if feature in history:
                    mean_lengths[feature] = max(length, 1e-3)
    overrides = {name: ParameterConstraints(sharding_types=spec.get("sharding_types"),
                                            compute_kernels=spec.get("compute_kernels"))
                 for name, spec in tables.items()}
    # Every table on the fused kernel (no data_parallel): each is then trained by
    # train.embedding_optimizer whatever plan the planner picks for the world size.
    return planner_constraints(model, mean_lengths, compute_device, overrides, fused_only=True)


def plan_for_config(config: Dict[str, Any], vocab: Dict[str, int], world_size: int,
                    compute_device: str = "cuda", local_world_size: Optional[int] = None,
                    batch_size: Optional[int] = None, mean_history: float = 1.0) -> ShardingPlan:
    """The planner's plan for the config's model, built on the meta device.

    ``config["tables"][name]["num_embeddings"]`` overrides a table's size (e.g. a
    production-sized item table); ``mean_history`` is the pooling factor of the history
    features. The planner logs its per-rank statistics (memory, perf) to the
    ``torchrec.distributed.planner.stats`` logger.
    """
    vocab = dict(vocab)
    for name, spec in table_overrides(config).items():
        if "num_embeddings" in spec:
            vocab[name] = int(spec["num_embeddings"])
    model = build_model(vocab, config, device=torch.device("meta"))
    topology = Topology(world_size=world_size, compute_device=compute_device,
                        local_world_size=local_world_size or min(world_size, 8))
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=batch_size or config["train"]["batch_size"],
        constraints=constraints_for(config, model, mean_history, compute_device))
    optimizer, lr, _ = embedding_optimizer(config["train"], compute_device)
    return planner.plan(model, make_sharders(optimizer, lr, compute_device))


def print_plan(config: Dict[str, Any], vocab: Dict[str, int], world_size: int,
               compute_device: str, mean_history: float = 1.0) -> ShardingPlan:
    """Plan and print the planner's statistics table and the plan."""
    stats = logging.getLogger("torchrec.distributed.planner.stats")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    stats.addHandler(handler)
    stats.setLevel(logging.INFO)
    stats.propagate = False
    try:
        plan = plan_for_config(config, vocab, world_size, compute_device,
                               mean_history=mean_history)
    finally:
        stats.removeHandler(handler)
    print(plan)
    return plan
