"""TorchRec planner constraints for any model holding TorchRec collections.

The planner estimates each table's input size, communication and lookup cost from the
number of ids a sample looks up in it: its per-feature *pooling factor*. Given none, it
assumes 1.0. That is right for a candidate feature, but a history feature looks up the
whole history, so its cost would be under-counted by the mean history length.
:func:`planner_constraints` carries each feature's mean length into the constraints.
"""

from typing import Dict, List, Mapping, Optional, Set

from torch import nn
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.modules.embedding_modules import EmbeddingCollection

from torchrec_din.distributed.sharding import collection_configs, find_collections

# What works on CPU (gloo): sequence tables need the fused kernel and no data_parallel; the
# planner refuses row_wise for pooled tables on CPU.
CPU_SEQUENCE_SHARDING = ["table_wise", "row_wise", "column_wise"]
CPU_POOLED_SHARDING = ["table_wise", "data_parallel"]
ALL_SHARDING = ["table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise",
                "data_parallel"]


def planner_constraints(
    module: nn.Module,
    mean_lengths: Optional[Mapping[str, float]] = None,
    compute_device: str = "cuda",
    overrides: Optional[Mapping[str, ParameterConstraints]] = None,
    fused_only: bool = False,
) -> Dict[str, ParameterConstraints]:
    """Per-table ParameterConstraints with pooling factors and CPU-safe choices.

    Args:
        module: any nn.Module holding EmbeddingCollection / EmbeddingBagCollection modules.
        mean_lengths: feature -> mean ids per sample (e.g. ``{"hist_item": 37.5}``); features
            not named get 1.0 (one id per sample).
        compute_device: "cuda" or "cpu"; on "cpu" the sharding types and kernels are limited
            to what runs there.
        overrides: table -> constraints whose ``sharding_types`` / ``compute_kernels`` (when
            set) replace the defaults.
        fused_only: every table on the ``fused`` kernel, never ``data_parallel``: each table
            is then updated by the sharders' fused optimizer whatever the plan, so one
            recipe trains the same on any number of ranks (a data-parallel table would be
            updated by the dense optimizer instead).

    Returns:
        Dict[str, ParameterConstraints]: for ``EmbeddingShardingPlanner(constraints=...)``.

    Example::

        constraints = planner_constraints(my_ranker, {"click_item": 40.0, "buy_item": 6.0})
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    """
    mean_lengths = dict(mean_lengths or {})
    overrides = dict(overrides or {})
    out: Dict[str, ParameterConstraints] = {}
    seen: List[str] = []
    known_features: Set[str] = set()
    for collection in find_collections(module).values():
        sequence = isinstance(collection, EmbeddingCollection)
        for config in collection_configs(collection):
            known_features.update(config.feature_names)
            factors = []
            for feature in config.feature_names:
                factor = float(mean_lengths.get(feature, 1.0))
                if not factor > 0:
                    raise ValueError(f"mean length of feature {feature!r} must be > 0, got "
                                     f"{factor}")
                factors.append(factor)
            sharding_types: Optional[List[str]] = None
            kernels: Optional[List[str]] = None
            if compute_device == "cpu":
                sharding_types = list(CPU_SEQUENCE_SHARDING if sequence else CPU_POOLED_SHARDING)
                kernels = ["fused"] if sequence else None
            if fused_only:
                kernels = ["fused"]
                sharding_types = [t for t in (sharding_types or ALL_SHARDING)
                                  if t != "data_parallel"]
            override = overrides.get(config.name)
            if override is not None:
                sharding_types = override.sharding_types or sharding_types
                kernels = override.compute_kernels or kernels
            out[config.name] = ParameterConstraints(
                sharding_types=sharding_types, compute_kernels=kernels, pooling_factors=factors)
            seen.append(config.name)
    unknown = sorted(set(overrides) - set(seen))
    if unknown:
        raise ValueError(f"tables {unknown} are not in the model; it has {seen}")
    stray = sorted(set(mean_lengths) - known_features)
    if stray:
        raise ValueError(f"mean_lengths names features {stray} that no table of the model "
                         f"reads; it has {sorted(known_features)}")
    return out
