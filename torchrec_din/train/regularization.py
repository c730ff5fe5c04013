"""Mini-batch aware L2 regularisation of embeddings (DIN paper, section 4.2)."""

from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.data.source import DataSource, table_id_counts
from torchrec_din.models import DINModel


class MiniBatchAwareL2(nn.Module):
    r"""The paper's mini-batch aware regulariser.

    .. math:: \lambda \sum_j \frac{\alpha_{mj}}{n_j} \lVert w_j \rVert_2^2

    over the embedding rows j present in the mini-batch (:math:`\alpha_{mj} = 1`), each
    scaled by its occurrence count :math:`n_j` in the training data. Rows absent from the
    batch cost nothing, so the cost is O(unique ids in the batch), not O(table size).

    Args:
        weights (Dict[str, Tensor]): table name -> embedding weight [rows, D].
        features (Dict[str, List[str]]): table name -> the KJT features looking it up.
        frequencies (Dict[str, np.ndarray]): table name -> n_j per row.
        strength (float): lambda.
    """

    def __init__(self, weights: Dict[str, Tensor], features: Dict[str, List[str]],
                 frequencies: Dict[str, np.ndarray], strength: float) -> None:
        super().__init__()
        self.weights = weights
        self.features = features
        self.strength = strength
        for name in weights:
            inv = 1.0 / np.maximum(frequencies[name], 1.0)
            self.register_buffer(f"inv_freq_{name}", torch.as_tensor(inv, dtype=torch.float32))

    def forward(self, kjts: List[KeyedJaggedTensor]) -> Tensor:
        first = next(iter(self.weights.values()))
        total = torch.zeros((), device=first.device)  # on the tables' device
        for name, weight in self.weights.items():
            ids = [kjt[f].values() for kjt in kjts if kjt is not None for f in self.features[name]
                   if f in kjt.keys()]
            if not ids:
                continue
            unique = torch.unique(torch.cat(ids))
            rows = weight.index_select(0, unique)
            inv = getattr(self, f"inv_freq_{name}").index_select(0, unique)
            total = total + (rows.pow(2).sum(1) * inv).sum()
        return self.strength * total


def make_regularizer(model: DINModel, source: DataSource,
                     train_cfg: Dict[str, Any]) -> Optional[MiniBatchAwareL2]:
    """The MBA regulariser when ``train.regularization=mba`` (None otherwise), with id
    frequencies counted over the source's training split."""
    kind = train_cfg["regularization"]
    if kind not in ("none", "l2", "mba"):
        raise ValueError(f"train.regularization must be none, l2 or mba, got {kind!r}")
    if kind != "mba":
        return None
    weights: Dict[str, torch.Tensor] = {}
    features: Dict[str, List[str]] = {}
    rows: Dict[str, int] = {}
    for name, module in model.embedding_collection.embeddings.items():
        weights[name] = module.weight
    for cfg in model.embedding_collection.embedding_configs():
        features[cfg.name] = list(cfg.feature_names)
        rows[cfg.name] = cfg.num_embeddings
    if model.embedding_bag_collection is not None:
        for name, module in model.embedding_bag_collection.embedding_bags.items():
            weights[name] = module.weight
        for cfg in model.embedding_bag_collection.embedding_bag_configs():
            features[cfg.name] = list(cfg.feature_names)
            rows[cfg.name] = cfg.num_embeddings
    frequencies = table_id_counts(source, features, rows)
    return MiniBatchAwareL2(weights, features, frequencies, train_cfg["l2_lambda"])
