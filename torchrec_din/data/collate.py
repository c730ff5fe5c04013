"""One DINBatch from per-feature numpy columns, for every loader (in-memory and Parquet).

``DINBatch`` itself lives in the library (``torchrec_din.batch``) and is re-exported here.
"""

from typing import Sequence, Tuple

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.batch import DINBatch  # noqa: F401
from torchrec_din.data.schema import FeatureSchema

# (values, lengths) of one jagged feature: ids back to back, and ids per row.
Jagged = Tuple[np.ndarray, np.ndarray]


def build_batch(
    schema: FeatureSchema,
    candidates: Sequence[np.ndarray],
    num_candidates: np.ndarray,
    histories: Sequence[Jagged],
    pooled: Sequence[Jagged],
    dense: np.ndarray,
    labels: np.ndarray,
) -> DINBatch:
    """A DINBatch whose KJT keys follow the schema, so the model and the planner see the same
    layout whichever loader built it.

    Args:
        schema: the feature schema.
        candidates: per ``schema.candidate_features()``, the K candidate ids.
        num_candidates: [B] candidates per row (ones, or K_b for shared histories).
        histories: per ``schema.history_features()``, (values, lengths [B]).
        pooled: per ``schema.pooled``, (values, lengths [B]); empty for no pooled features.
        dense: [B, F_dense] floats. labels: [K].
    """
    keys = schema.sequence_features()
    values = list(candidates) + [v for v, _ in histories]
    lengths = [num_candidates] * len(candidates) + [n for _, n in histories]
    if len(values) != len(keys):
        raise ValueError(f"{len(values)} sequence columns for the schema's {len(keys)} "
                         f"features {keys}")
    sequence = KeyedJaggedTensor(
        keys=keys,
        values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int64, copy=False)))
    pooled_kjt = None
    if schema.pooled:
        pooled_kjt = KeyedJaggedTensor(
            keys=list(schema.pooled),
            values=torch.from_numpy(
                np.concatenate([v for v, _ in pooled]).astype(np.int64, copy=False)),
            lengths=torch.from_numpy(
                np.concatenate([n for _, n in pooled]).astype(np.int64, copy=False)))
    return DINBatch(
        sequence_features=sequence,
        pooled_features=pooled_kjt,
        dense_features=torch.from_numpy(np.asarray(dense, dtype=np.float32)),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.float32)),
    )
