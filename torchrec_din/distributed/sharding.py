"""Sharding DIN with TorchRec: sharders, manual plans, DistributedModelParallel.

CPU facts this follows (../shared/PLATFORM_NOTES.md): sequence (EmbeddingCollection) tables
must use the ``fused`` compute kernel and never ``data_parallel`` on CPU; pooled tables may
be data_parallel. The sharded collections update their tables with a fused optimizer (in the
backward pass), so the dense optimizer must skip them (:func:`dense_parameters`).
"""

from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan
from torchrec.optim.optimizers import in_backward_optimizer_filter
from fbgemm_gpu.split_embedding_configs import EmbOptimType

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")
_FUSED_OPTIMIZERS = {"sgd": EmbOptimType.EXACT_SGD, "adagrad": EmbOptimType.EXACT_ADAGRAD,
                     "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                     "adam": EmbOptimType.ADAM}
# FBGEMM's CPU tables implement only these fused optimizers.
CPU_FUSED_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


def make_sharders(optimizer: str = "sgd", learning_rate: float = 0.01) -> List[ModuleSharder]:
    """Sharders for the EmbeddingCollection and EmbeddingBagCollection with a fused optimizer."""
    if optimizer not in _FUSED_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(_FUSED_OPTIMIZERS)}, got {optimizer!r}")
    fused = {"optimizer": _FUSED_OPTIMIZERS[optimizer], "learning_rate": learning_rate}
    return [EmbeddingCollectionSharder(fused_params=fused),
            EmbeddingBagCollectionSharder(fused_params=fused)]


def _generator(sharding_type: str, world_size: int, sequence: bool):
    if sharding_type == "table_wise":
        return table_wise(rank=0, compute_kernel="fused")
    if sharding_type == "row_wise":
        return row_wise(compute_kernel="fused")
    if sharding_type == "column_wise":
        return column_wise(ranks=list(range(world_size)), compute_kernel="fused")
    if sharding_type == "data_parallel":
        if sequence:
            raise ValueError("data_parallel is not supported for EmbeddingCollection tables on "
                             "CPU (torchrec returns pooled rows); use table_wise, row_wise or "
                             "column_wise")
        return data_parallel()
    raise ValueError(f"sharding type must be one of {list(SHARDING_TYPES)}, got {sharding_type!r}")


def manual_plan(
    module: nn.Module,
    sequence_tables: Dict[str, str],
    pooled_tables: Dict[str, str],
    world_size: int,
    sharders: List[ModuleSharder],
    prefix: str = "",
    device_type: str = "cpu",
) -> ShardingPlan:
    """A ShardingPlan with one sharding type per table.

    Args:
        module: the DIN model (or a wrapper; ``prefix`` is the path to the DIN model, e.g.
            ``"model."`` for DINTrain).
        sequence_tables / pooled_tables: table name -> sharding type.
    """
    model = module.get_submodule(prefix.rstrip(".")) if prefix else module
    plan: Dict[str, object] = {}
    ec_sharder, ebc_sharder = sharders[0], sharders[1]
    plan[f"{prefix}embedding_collection"] = construct_module_sharding_plan(
        model.embedding_collection,
        {t: _generator(s, world_size, True) for t, s in sequence_tables.items()},
        sharder=ec_sharder, local_size=world_size, world_size=world_size,
        device_type=device_type)
    if model.embedding_bag_collection is not None and pooled_tables:
        plan[f"{prefix}embedding_bag_collection"] = construct_module_sharding_plan(
            model.embedding_bag_collection,
            {t: _generator(s, world_size, False) for t, s in pooled_tables.items()},
            sharder=ebc_sharder, local_size=world_size, world_size=world_size,
            device_type=device_type)
    return ShardingPlan(plan)


def shard(module: nn.Module, plan: ShardingPlan, sharders: List[ModuleSharder],
          pg: Optional[torch.distributed.ProcessGroup] = None,
          device: torch.device = torch.device("cpu")) -> DistributedModelParallel:
    """DistributedModelParallel over ``module`` with ``plan`` (dense parts wrapped in DDP)."""
    env = ShardingEnv.from_process_group(pg or torch.distributed.group.WORLD)
    return DistributedModelParallel(module, env=env, device=device, plan=plan, sharders=sharders)


def dense_parameters(model: nn.Module) -> Iterator[Tuple[str, nn.Parameter]]:
    """Parameters not updated by a fused (in-backward) optimizer: give these to the dense one."""
    return iter(in_backward_optimizer_filter(model.named_parameters()))


def gather_state_dict(model: nn.Module, dst: int = 0) -> Dict[str, torch.Tensor]:
    """The full (unsharded) state dict on rank ``dst`` (other ranks get {}); collective."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    rank = torch.distributed.get_rank()
    out: Dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        key = _plain_name(name)
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size()) if rank == dst else None
            value.gather(dst=dst, out=full)
            if rank == dst:
                out[key] = full
        elif rank == dst:
            out[key] = value.detach().clone()
    return out


def _plain_name(name: str) -> str:
    return name.replace("_dmp_wrapped_module.", "").replace("module.", "")


def load_full_state_dict(model: nn.Module, full: Dict[str, torch.Tensor]) -> None:
    """Copy an unsharded state dict into a sharded model: each rank copies its own shards."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    for name, value in model.state_dict().items():
        src = full[_plain_name(name)]
        with torch.no_grad():
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    (r, c), (h, w) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(src[r:r + h, c:c + w])
            else:
                value.copy_(src)
