"""Sharded DIN: sharders, manual plans, DistributedModelParallel helpers."""

from torchrec_din.distributed.sharding import (  # noqa: F401
    dense_parameters,
    gather_state_dict,
    load_full_state_dict,
    make_sharders,
    manual_plan,
    shard,
    SHARDING_TYPES,
)
