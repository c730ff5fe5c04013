"""Mini-batches the loader yields and DINTrain / TrainPipelineSparseDist consume: DINBatch
(one sequence KJT, one pooled KJT) and FeatureBatch (any number of KJTs by name)."""

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class DINBatch(Pipelineable):
    """One mini-batch: jagged id features, pooled id features, dense features, labels.

    Args:
        sequence_features (KeyedJaggedTensor): features of the EmbeddingCollection:
            candidates (one id per sample, e.g. ``item``, ``cate``) and histories
            (``hist_item``, ``hist_cate``: oldest..newest, any length, no padding).
        pooled_features (Optional[KeyedJaggedTensor]): features of the
            EmbeddingBagCollection (e.g. ``user``, ``age``); None if the model has none.
        dense_features (Tensor): [B, F] float (F may be 0).
        labels (Tensor): [B] float in {0, 1}.

    Example::

        batch = DINBatch(kjt, None, torch.zeros(B, 0), torch.ones(B))
        batch = batch.to(torch.device("cpu"))
    """

    sequence_features: KeyedJaggedTensor
    pooled_features: Optional[KeyedJaggedTensor]
    dense_features: Tensor
    labels: Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> "DINBatch":
        pooled = self.pooled_features
        return DINBatch(
            sequence_features=self.sequence_features.to(device=device, non_blocking=non_blocking),
            pooled_features=None
            if pooled is None
            else pooled.to(device=device, non_blocking=non_blocking),
            dense_features=self.dense_features.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.sequence_features.record_stream(stream)
        if self.pooled_features is not None:
            self.pooled_features.record_stream(stream)
        self.dense_features.record_stream(stream)
        self.labels.record_stream(stream)

    def pin_memory(self) -> "DINBatch":
        pooled = self.pooled_features
        return DINBatch(
            sequence_features=self.sequence_features.pin_memory(),
            pooled_features=None if pooled is None else pooled.pin_memory(),
            dense_features=self.dense_features.pin_memory(),
            labels=self.labels.pin_memory(),
        )

    @property
    def batch_size(self) -> int:
        return int(self.labels.numel())


@dataclass
class FeatureBatch(Pipelineable):
    """A mini-batch with any number of KeyedJaggedTensors by name, for models whose sparse
    features go to several collections (e.g. one EmbeddingCollection per embedding dim, an
    EmbeddingBagCollection for user features). ``TrainPipelineSparseDist`` finds each
    sharded collection's input as ``batch.sparse_features["<name>"]`` and moves, pins and
    input-distributes it ahead of the step like ``DINBatch``'s.

    Args:
        sparse_features (Dict[str, KeyedJaggedTensor]): name -> KJT (one per collection).
        dense_features (Tensor): [B, F] float (F may be 0).
        labels (Tensor): [B] float in {0, 1}.

    Example::

        batch = FeatureBatch({"items": kjt_items, "cates": kjt_cates, "user": kjt_user},
                             dense, labels)
        # in the model's forward:
        emb = din.merge([self.ec_items(batch.sparse_features["items"]),
                         self.ec_cates(batch.sparse_features["cates"])])
    """

    sparse_features: Dict[str, KeyedJaggedTensor]
    dense_features: Tensor
    labels: Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> "FeatureBatch":
        return FeatureBatch(
            sparse_features={k: v.to(device=device, non_blocking=non_blocking)
                             for k, v in self.sparse_features.items()},
            dense_features=self.dense_features.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        for kjt in self.sparse_features.values():
            kjt.record_stream(stream)
        self.dense_features.record_stream(stream)
        self.labels.record_stream(stream)

    def pin_memory(self) -> "FeatureBatch":
        return FeatureBatch(
            sparse_features={k: v.pin_memory() for k, v in self.sparse_features.items()},
            dense_features=self.dense_features.pin_memory(),
            labels=self.labels.pin_memory(),
        )

    @property
    def batch_size(self) -> int:
        return int(self.labels.numel())
