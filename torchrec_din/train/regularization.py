"""Mini-batch aware L2 regularisation of embeddings (DIN paper, section 4.2)."""

from typing import Dict, List

import numpy as np
import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.data.samples import SampleTable
from torchrec_din.data.schema import FeatureSchema


def training_frequencies(table: SampleTable, rows: np.ndarray, schema: FeatureSchema,
                         vocab: Dict[str, int], chunk: int = 50_000) -> Dict[str, np.ndarray]:
    """How often each id occurs in the training samples, per table of the schema (every
    feature that looks the table up: candidates, histories, pooled user features)."""
    out: Dict[str, np.ndarray] = {}
    users = table.user_row[rows]
    for name, features in schema.table_features().items():
        counts = np.zeros(vocab[name], dtype=np.float64)
        for f in features:
            if f in schema.pooled:
                counts += np.bincount(table.user_column(f)[users], minlength=vocab[name])
            elif f in schema.candidate_features():
                counts += np.bincount(table.candidate_column(f)[rows], minlength=vocab[name])
            else:
                column = table.history_column(f)
                for start in range(0, rows.size, chunk):
                    flat, _ = table.history_positions(rows[start:start + chunk])
                    counts += np.bincount(column[flat], minlength=vocab[name])
        out[name] = counts
    return out


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
