"""Sharding any model that holds TorchRec collections: sharders, plans, constraints, DMP."""

from torchrec_din.distributed.planning import planner_constraints  # noqa: F401
from torchrec_din.distributed.sharding import (  # noqa: F401
    collection_configs,
    collection_tables,
    CPU_FUSED_OPTIMIZERS,
    dense_parameters,
    find_collections,
    fused_optimizers,
    gather_state_dict,
    load_full_state_dict,
    make_sharders,
    manual_plan,
    plain_name,
    shard,
    SHARDING_TYPES,
    use_pipeline_jit_model,
)
from torchrec_din.distributed.statistics import statistics_buffers, sync_buffers  # noqa: F401
