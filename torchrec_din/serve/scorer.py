"""Serving: score K_u candidates per user against one history, the history embedded once.

The scorer is the trained model itself in eval mode on the grouped form
(:meth:`DINModel.forward_grouped`): each user's history is looked up once and every
behaviour's candidate-independent attention part is computed once, whatever the number of
candidates. There is no second copy of the attention math here: this module only turns
request tensors into the KeyedJaggedTensors the model reads.
"""

from typing import List, Tuple

import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.models.din import DINModel


class DINScorer(nn.Module):
    """A TorchScript-able scorer around a trained DIN or BaseModel (fp32 or int8 tables).

    Supports models whose attention groups read candidate features paired one to one with
    history features (as ``torchrec_din.train`` builds them: one group), every activation,
    normalization and the outer product, pooled features with one id per user, and dense
    features per user. Call ``.eval()`` first (Dice then uses its running statistics, so
    every score is independent of the rest of the request).

    Args:
        model (DINModel): a trained DIN or BaseModel (unsharded; may be quantized with
            ``torchrec.inference.modules.quantize_inference_model``).
        max_history (int): keep each user's newest ``max_history`` behaviours, as training
            did (``data.max_history``); 0 keeps all.

    Call args:
        history_ids: [N, F] history ids, one column per group feature (e.g. item, cate),
            users back to back, oldest..newest.
        history_lengths: [U] behaviours per user.
        candidate_ids: [K, F] candidate ids, users back to back.
        candidate_counts: [U] candidates per user.
        pooled_ids: [U, P] one id per pooled feature (in ``pooled_features`` order).
        dense: [U, F_dense] dense features per user.

    Returns:
        Tensor: [K] logits, one per candidate.

    Example::

        scorer = torch.jit.script(DINScorer(trained).eval())
        logits = scorer(hist, torch.tensor([3]), cands, torch.tensor([2]), pooled, dense)
    """

    def __init__(self, model: DINModel, max_history: int = 0) -> None:
        super().__init__()
        if max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {max_history}")
        interaction = model.interaction
        if len(interaction.groups) != 1:
            raise ValueError("DINScorer supports models with exactly one attention group")
        group = interaction.groups[0]
        self.max_history: int = max_history
        self.features: List[str] = list(group.candidate_features)
        self.history_features: List[str] = list(group.history_features)
        self.pooled_features: List[str] = list(model.pooled_keys)
        self.dense_in_features: int = model.dense_in_features
        self.model = model

    def forward(
        self,
        history_ids: Tensor,
        history_lengths: Tensor,
        candidate_ids: Tensor,
        candidate_counts: Tensor,
        pooled_ids: Tensor,
        dense: Tensor,
    ) -> Tensor:
        num_users = history_lengths.numel()
        if self.max_history > 0:
            # Newest max_history behaviours of each user (histories run oldest..newest).
            seg = torch.repeat_interleave(torch.arange(num_users, device=history_ids.device),
                                          history_lengths, output_size=history_ids.size(0))
            ends = torch.cumsum(history_lengths, 0).index_select(0, seg)
            from_end = ends - torch.arange(history_ids.size(0), device=history_ids.device)
            history_ids = history_ids[from_end <= self.max_history]
            history_lengths = history_lengths.clamp(max=self.max_history)
        sequence, pooled = request_kjts(
            self.features, self.history_features, self.pooled_features, history_ids,
            history_lengths, candidate_ids, candidate_counts, pooled_ids)
        return self.model.forward_grouped(sequence, pooled, dense)


def request_kjts(
    features: List[str],
    history_features: List[str],
    pooled_features: List[str],
    history_ids: Tensor,
    history_lengths: Tensor,
    candidate_ids: Tensor,
    candidate_counts: Tensor,
    pooled_ids: Tensor,
) -> Tuple[KeyedJaggedTensor, KeyedJaggedTensor]:
    """The model's inputs in the grouped form: candidate features with K_u ids per user,
    history features with the user's behaviours, pooled features with one id per user."""
    values: List[Tensor] = []
    lengths: List[Tensor] = []
    for i in range(len(features)):
        values.append(candidate_ids[:, i])
        lengths.append(candidate_counts)
    for i in range(len(history_features)):
        values.append(history_ids[:, i])
        lengths.append(history_lengths)
    sequence = KeyedJaggedTensor(keys=features + history_features, values=torch.cat(values),
                                 lengths=torch.cat(lengths))
    pooled = KeyedJaggedTensor(
        keys=pooled_features, values=pooled_ids.t().reshape(-1),
        lengths=torch.ones(pooled_ids.numel(), dtype=torch.long, device=pooled_ids.device))
    return sequence, pooled


# A leaf in fx graphs (it builds KeyedJaggedTensors), so that the int8 scorer can follow
# TorchRec's inference recipe: torchrec.fx.symbolic_trace, then torch.jit.script.
torch.fx.wrap("request_kjts")
