"""Mini-batch aware L2 regularisation of embeddings (DIN paper, section 4.2)."""

from typing import Dict, List

import numpy as np
import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.data.samples import SampleTable


def training_frequencies(table: SampleTable, rows: np.ndarray, chunk: int = 50_000) -> Dict[str, np.ndarray]:
    """How often each id occurs in the training samples, per table (candidates + histories
    for item and cate, one per sample for user features)."""
    item = np.bincount(table.item[rows], minlength=table.vocab["item"]).astype(np.float64)
    cate = np.bincount(table.cate[rows], minlength=table.vocab["cate"]).astype(np.float64)
    for start in range(0, rows.size, chunk):
        flat, _ = table.history_positions(rows[start:start + chunk])
        item += np.bincount(table.seq_item[flat], minlength=table.vocab["item"])
        cate += np.bincount(table.seq_cate[flat], minlength=table.vocab["cate"])
    out = {"item": item, "cate": cate}
    users = table.user_row[rows]
    for name, values in table.user_features.items():
        out[name] = np.bincount(values[users], minlength=table.vocab[name]).astype(np.float64)
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
        total = torch.zeros(())
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
