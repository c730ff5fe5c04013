"""Sharding any model that holds TorchRec collections: sharders, manual plans, DMP helpers.

Nothing here assumes our own model: collections are found by walking the module, as
TorchRec's planner does. Facts about CPU (gloo) training that these helpers encode:

* FBGEMM's CPU tables implement only the fused optimizers sgd, adagrad and
  rowwise_adagrad; CUDA adds adam and others.
* Sequence (EmbeddingCollection) tables on CPU need the ``fused`` compute kernel: the
  ``dense`` kernel returns pooled rows for unpooled lookups there (FBGEMM issue 4586), and
  ``data_parallel`` (which forces it) fails for them. Pooled tables may be data_parallel.
* The sharded collections update their tables with the fused optimizer in the backward
  pass, so the dense optimizer must skip them (:func:`dense_parameters`).
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
from torchrec.modules.embedding_configs import BaseEmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.optimizers import in_backward_optimizer_filter
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")
_FUSED_OPTIMIZERS = {"sgd": EmbOptimType.EXACT_SGD, "adagrad": EmbOptimType.EXACT_ADAGRAD,
                     "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                     "adam": EmbOptimType.ADAM, "lamb": EmbOptimType.LAMB,
                     "lars_sgd": EmbOptimType.LARS_SGD}
# FBGEMM's CPU tables implement only these fused optimizers.
CPU_FUSED_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


def fused_optimizers(device_type: str) -> Tuple[str, ...]:
    """Fused (in-backward) table optimizers FBGEMM implements on ``device_type``."""
    return CPU_FUSED_OPTIMIZERS if device_type == "cpu" else tuple(_FUSED_OPTIMIZERS)


def make_sharders(
    optimizer: str = "sgd", learning_rate: float = 0.01, device_type: str = "cpu",
    weight_decay: float = 0.0,
) -> List[ModuleSharder]:
    """Sharders for EmbeddingCollection and EmbeddingBagCollection with a fused optimizer.

    Args:
        optimizer: fused table optimizer, checked against what FBGEMM has on the device.
        learning_rate: its learning rate.
        device_type: "cpu" or "cuda".
        weight_decay: L2 weight decay of the rows each batch updates (FBGEMM's
            ``WeightDecayMode.L2``; 0: none).
    """
    available = fused_optimizers(device_type)
    if optimizer not in available:
        raise ValueError(f"optimizer must be one of {list(available)} for embedding tables on "
                         f"{device_type} (FBGEMM's fused optimizers there), got {optimizer!r}")
    fused: Dict[str, object] = {"optimizer": _FUSED_OPTIMIZERS[optimizer],
                                "learning_rate": learning_rate}
    if weight_decay > 0:
        fused.update(weight_decay=weight_decay, weight_decay_mode=WeightDecayMode.L2)
    return [EmbeddingCollectionSharder(fused_params=fused),
            EmbeddingBagCollectionSharder(fused_params=fused)]


def find_collections(module: nn.Module) -> Dict[str, nn.Module]:
    """Every EmbeddingCollection / EmbeddingBagCollection in ``module``, by module path."""
    return {path: m for path, m in module.named_modules()
            if isinstance(m, (EmbeddingCollection, EmbeddingBagCollection))}


def collection_configs(collection: nn.Module) -> List[BaseEmbeddingConfig]:
    """Table configs of an (unsharded) EmbeddingCollection or EmbeddingBagCollection."""
    if isinstance(collection, EmbeddingCollection):
        return list(collection.embedding_configs())
    return list(collection.embedding_bag_configs())


def collection_tables(collection: nn.Module) -> List[str]:
    """Table names of an (unsharded) EmbeddingCollection or EmbeddingBagCollection."""
    return [c.name for c in collection_configs(collection)]


def _generator(sharding_type: str, world_size: int, sequence: bool, device_type: str):  # noqa: ANN202
    kernel = "fused"
    if sharding_type == "table_wise":
        return table_wise(rank=0, compute_kernel=kernel)
    if sharding_type == "row_wise":
        return row_wise(compute_kernel=kernel)
    if sharding_type == "column_wise":
        return column_wise(ranks=list(range(world_size)), compute_kernel=kernel)
    if sharding_type == "data_parallel":
        if sequence and device_type == "cpu":
            raise ValueError("data_parallel is not supported for EmbeddingCollection tables on "
                             "CPU (torchrec returns pooled rows); use table_wise, row_wise or "
                             "column_wise")
        return data_parallel()
    raise ValueError(f"sharding type must be one of {list(SHARDING_TYPES)}, got {sharding_type!r}")


def manual_plan(
    module: nn.Module,
    sharding_types: Dict[str, str],
    world_size: int,
    sharders: List[ModuleSharder],
    device_type: str = "cpu",
    default: str = "table_wise",
) -> ShardingPlan:
    """A ShardingPlan with a chosen sharding type per table, for any module.

    Args:
        module: any nn.Module holding TorchRec EmbeddingCollection /
            EmbeddingBagCollection modules (found by walking it, at any depth).
        sharding_types: table name -> "table_wise", "row_wise", "column_wise" or
            "data_parallel"; tables not named get ``default``.
        world_size: number of ranks.
        sharders: from :func:`make_sharders`.
        device_type: "cpu" (gloo) or "cuda".

    Example::

        plan = manual_plan(my_ranker, {"item": "row_wise"}, 2, make_sharders("sgd", 0.05))
        dmp = shard(my_ranker, plan, sharders)
    """
    collections = find_collections(module)
    if not collections:
        raise ValueError(f"{type(module).__name__} holds no EmbeddingCollection or "
                         "EmbeddingBagCollection to shard")
    known = [t for c in collections.values() for t in collection_tables(c)]
    unknown = sorted(set(sharding_types) - set(known))
    if unknown:
        raise ValueError(f"sharding_types names tables {unknown} that are not in the model; "
                         f"it has {known}")
    plan: Dict[str, object] = {}
    for path, collection in collections.items():
        sequence = isinstance(collection, EmbeddingCollection)
        sharder = next(s for s in sharders if isinstance(collection, s.module_type))
        plan[path] = construct_module_sharding_plan(
            collection,
            {t: _generator(sharding_types.get(t, default), world_size, sequence, device_type)
             for t in collection_tables(collection)},
            sharder=sharder, local_size=world_size, world_size=world_size,
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
        key = plain_name(name)
        if isinstance(value, ShardedTensor):
            # metadata(), not size(): torch functions on a ShardedTensor warn that it is
            # deprecated, and TorchRec's state dict still hands us ShardedTensors.
            full = torch.empty(value.metadata().size) if rank == dst else None
            value.gather(dst=dst, out=full)
            if rank == dst:
                out[key] = full
        elif rank == dst:
            out[key] = value.detach().clone()
    return out


def plain_name(name: str) -> str:
    """A DistributedModelParallel state-dict or parameter name as the unwrapped model's
    (``_dmp_wrapped_module.module.model.x`` -> ``model.x``)."""
    return name.replace("_dmp_wrapped_module.", "").replace("module.", "")


def load_full_state_dict(model: nn.Module, full: Dict[str, torch.Tensor]) -> None:
    """Copy an unsharded state dict into a sharded model: each rank copies its own shards."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    for name, value in model.state_dict().items():
        src = full[plain_name(name)]
        with torch.no_grad():
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    (r, c), (h, w) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(src[r:r + h, c:c + w])
            else:
                value.copy_(src)


def use_pipeline_jit_model(model: DistributedModelParallel) -> bool:
    """Make ``TrainPipelineSparseDist(apply_jit=True)`` run the scripted model it built.

    With ``apply_jit=True`` the pipeline fx-traces the model, TorchScripts every non-sharded
    child of a module holding sharded ones (DINInteraction, the MLPs, the loss) and stores
    the result with ``dmp.module = graph``. In TorchRec 1.8 that assignment goes through
    ``nn.Module.__setattr__``, which registers the graph as a new, unused submodule named
    ``module`` instead of calling DMP's property setter: training keeps running the eager
    model, and the state dict gains a second copy of every weight. This moves the scripted
    graph to where the eager model was (inside DDP, whose gradient hooks sit on the same
    parameter objects). Call it after the pipeline's first ``progress()`` (the model is
    rewritten lazily on the first batch); calling it again is a no-op.

    Returns:
        bool: True if it moved a scripted graph into place.

    Example::

        pipeline = TrainPipelineSparseDist(dmp, opt, device, apply_jit=True)
        pipeline.progress(it)
        use_pipeline_jit_model(dmp)
    """
    graph = model._modules.pop("module", None)
    if graph is None:
        return False
    wrapped = model._dmp_wrapped_module
    if hasattr(wrapped, "module") and isinstance(wrapped.module, nn.Module) \
            and wrapped is not model.module:
        wrapped.module = graph  # DDP (or another wrapper) around the sharded model
    else:
        model._dmp_wrapped_module = graph
    return True
