"""Sharded DIN: sharders, manual plans, DistributedModelParallel helpers."""

from torchrec_din.distributed.sharding import (  # noqa: F401
    CPU_FUSED_OPTIMIZERS,
    dense_parameters,
    gather_state_dict,
    load_full_state_dict,
    make_sharders,
    manual_plan,
    shard,
    SHARDING_TYPES,
)
