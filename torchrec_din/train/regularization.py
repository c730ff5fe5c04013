"""Mini-batch aware L2 regularisation of embeddings (DIN paper, section 4.2), for plain and
sharded tables alike."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_din.data.source import DataSource, table_id_counts
from torchrec_din.models import DINModel

# table -> (ids [n], their rows [n, D]) of every id the batch looked up in it.
Lookups = Dict[str, List[Tuple[Tensor, Tensor]]]


def occurrences(ids: Tensor) -> Tensor:
    """[n] how often each entry's id occurs in ``ids``, with fixed-size tensors only (a
    sort, a segment count), so no host sync: ``torch.unique`` would return a data-dependent
    size."""
    n = ids.numel()
    ordered, order = torch.sort(ids)
    starts = torch.ones(n, dtype=torch.bool, device=ids.device)
    starts[1:] = ordered[1:] != ordered[:-1]
    run = torch.cumsum(starts.long(), 0) - 1  # the run of equal ids each sorted entry is in
    counts = torch.zeros(n, dtype=torch.float32, device=ids.device).index_add_(
        0, run, torch.ones(n, dtype=torch.float32, device=ids.device))
    return torch.empty_like(counts).scatter_(0, order, counts.index_select(0, run))


class MiniBatchAwareL2(nn.Module):
    r"""The paper's mini-batch aware regulariser.

    .. math:: \lambda \sum_j \frac{\alpha_{mj}}{n_j} \lVert w_j \rVert_2^2

    over the embedding rows j present in the mini-batch (:math:`\alpha_{mj} = 1`), each
    scaled by its occurrence count :math:`n_j` in the training data. It is computed from the
    batch's lookups: every looked-up copy of row j counts :math:`1 / (n_j c_j)` where
    :math:`c_j` is how often j occurs in the batch, so each row counts once and its gradient
    is :math:`2 \lambda w_j / n_j`. The copies may come from the tables
    (:meth:`lookups_from_tables`) or from the collections' outputs
    (:meth:`lookups_from_outputs`: sharded tables, which are no autograd leaves, get their
    gradient through the lookup like any other loss term). Rows absent from the batch cost
    nothing: O(ids in the batch), not O(table size).

    Under DistributedModelParallel each rank's penalty covers its own batch, and TorchRec
    averages the tables' gradients over ranks: the mean of the ranks' penalties, as the loss
    is the mean of their losses.

    Args:
        features (Dict[str, List[str]]): table name -> the KJT features looking it up.
        frequencies (Dict[str, np.ndarray]): table name -> n_j per row.
        strength (float): lambda.
        pooled (Sequence[str]): which of the features are the EmbeddingBagCollection's.
    """

    def __init__(self, features: Dict[str, List[str]], frequencies: Dict[str, np.ndarray],
                 strength: float, pooled: Sequence[str] = ()) -> None:
        super().__init__()
        self.features = features
        self.strength = strength
        self.table_of = {f: t for t, fs in features.items() for f in fs}
        bags = set(pooled)
        self.pooled = [f for f in self.table_of if f in bags]
        self.sequence = [f for f in self.table_of if f not in bags]
        for name in features:
            inv = 1.0 / np.maximum(frequencies[name], 1.0)
            # Not in the state dict: recomputed from the data at every start.
            self.register_buffer(f"inv_freq_{name}", torch.as_tensor(inv, dtype=torch.float32),
                                 persistent=False)

    def lookups_from_tables(self, weights: Dict[str, Tensor],
                            kjts: List[Optional[KeyedJaggedTensor]]) -> Lookups:
        """Rows of the tables' weights (``weights``: table -> [rows, D]) for every id of
        the batch's KJTs (bags are counted id by id)."""
        out: Lookups = {}
        for kjt in kjts:
            if kjt is None:
                continue
            for f in kjt.keys():
                table = self.table_of.get(f)
                if table is not None:
                    ids = kjt[f].values()
                    out.setdefault(table, []).append((ids, weights[table].index_select(0, ids)))
        return out

    def lookups_from_outputs(self, sequence: KeyedJaggedTensor,
                             embeddings: Dict[str, JaggedTensor],
                             pooled_kjt: Optional[KeyedJaggedTensor],
                             pooled: Dict[str, Tensor]) -> Lookups:
        """The rows the collections returned: the EmbeddingCollection's (one per id) and
        the EmbeddingBagCollection's, which are the rows themselves for one-id bags only
        (the backend refuses multi-hot bags with this form)."""
        out: Lookups = {}
        # By known keys: under TrainPipelineSparseDist's tracing the sharded collections'
        # outputs are fx proxies, which cannot be iterated.
        for f in self.sequence:
            out.setdefault(self.table_of[f], []).append((sequence[f].values(),
                                                         embeddings[f].values()))
        if pooled_kjt is not None:
            for f in self.pooled:
                out.setdefault(self.table_of[f], []).append((pooled_kjt[f].values(), pooled[f]))
        return out

    def forward(self, lookups: Lookups) -> Tensor:
        total: Optional[Tensor] = None
        for table, pairs in lookups.items():
            ids = torch.cat([i for i, _ in pairs])
            rows = torch.cat([r for _, r in pairs])
            inv = getattr(self, f"inv_freq_{table}").index_select(0, ids)
            term = (rows.pow(2).sum(1) * inv / occurrences(ids)).sum()
            total = term if total is None else total + term
        if total is None:  # nothing looked up in a regularised table
            return torch.zeros((), device=next(self.buffers()).device)
        return self.strength * total


class MBAPenalty(nn.Module):
    """:class:`MiniBatchAwareL2` as ``DINTrain``'s penalty.

    Args:
        mba (MiniBatchAwareL2): the regulariser.
        weights (Optional[Dict[str, Tensor]]): table -> weight of plain tables: rows are
            taken from them (every id of multi-hot bags too); None: from the collections'
            outputs (sharded tables).
    """

    def __init__(self, mba: MiniBatchAwareL2,
                 weights: Optional[Dict[str, Tensor]] = None) -> None:
        super().__init__()
        self.mba = mba
        self.weights = weights  # the model's own parameters: not registered a second time

    def forward(self, batch: Any, embeddings: Dict[str, JaggedTensor],
                pooled: Dict[str, Tensor]) -> Tensor:
        if self.weights is not None:
            lookups = self.mba.lookups_from_tables(
                self.weights, [batch.sequence_features, batch.pooled_features])
        else:
            lookups = self.mba.lookups_from_outputs(
                batch.sequence_features, embeddings, batch.pooled_features, pooled)
        return self.mba(lookups)


def table_weights(model: DINModel) -> Dict[str, Tensor]:
    """Table -> embedding weight of the model's (unsharded) collections."""
    out = {name: m.weight for name, m in model.embedding_collection.embeddings.items()}
    if model.embedding_bag_collection is not None:
        out.update({name: m.weight
                    for name, m in model.embedding_bag_collection.embedding_bags.items()})
    return out


def table_features(model: DINModel) -> Tuple[Dict[str, List[str]], Dict[str, int], List[str]]:
    """Table -> the features looking it up, table -> rows, and the pooled features, of the
    model's collections."""
    features: Dict[str, List[str]] = {}
    rows: Dict[str, int] = {}
    bags = ([] if model.embedding_bag_collection is None
            else list(model.embedding_bag_collection.embedding_bag_configs()))
    for cfg in list(model.embedding_collection.embedding_configs()) + bags:
        features[cfg.name] = list(cfg.feature_names)
        rows[cfg.name] = cfg.num_embeddings
    return features, rows, [f for cfg in bags for f in cfg.feature_names]


def make_regularizer(model: DINModel, source: DataSource,
                     train_cfg: Dict[str, Any]) -> Optional[MiniBatchAwareL2]:
    """The MBA regulariser when ``train.regularization=mba`` (None otherwise), with id
    frequencies counted over the source's training split."""
    kind = train_cfg["regularization"]
    if kind not in ("none", "l2", "mba"):
        raise ValueError(f"train.regularization must be none, l2 or mba, got {kind!r}")
    if kind != "mba":
        return None
    features, rows, pooled = table_features(model)
    return MiniBatchAwareL2(features, table_id_counts(source, features, rows),
                            train_cfg["l2_lambda"], pooled)
