"""Serving: score K_u candidates per user against one history, the history embedded once.

The scorer is the trained model itself in eval mode on the grouped form
(:meth:`DINModel.forward_grouped`): each user's history is looked up once and every
behaviour's candidate-independent attention part is computed once, whatever the number of
candidates. There is no second copy of the attention math here: this module only turns
request tensors into the KeyedJaggedTensors the model reads.
"""

from typing import List

import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.grouped import newest, pooled_kjt, request_kjt  # noqa: F401 (re-exported)
from torchrec_din.models.din import DINModel


class DINScorer(nn.Module):
    """A TorchScript-able scorer around a trained DIN or BaseModel (fp32 or int8 tables).

    Supports every model ``torchrec_din.train`` builds: any number of attention groups (each
    with its own history, all against the same candidates), every activation, normalization
    and the outer product, pooled features (single- or multi-hot) and dense features per
    user. Call ``.eval()`` first (Dice then uses its running statistics, so every score is
    independent of the rest of the request).

    Args:
        model (DINModel): a trained DIN or BaseModel (unsharded; may be quantized with
            ``torchrec.inference.modules.quantize_inference_model``).
        max_history (int): keep each user's newest ``max_history`` behaviours of every
            group, as training did (``data.max_history``); 0 keeps all.

    Call args (G attention groups, U users, K candidates in all):
        history_ids: G tensors, group g's [N_g, F_g] history ids, one column per feature of
            ``history_features[g]``, users back to back, oldest..newest.
        history_lengths: G tensors [U], behaviours per user in each group.
        candidate_ids: [K, F] candidate ids, one column per feature of ``features``, users
            back to back.
        candidate_counts: [U] candidates per user.
        pooled: KeyedJaggedTensor of the pooled features (``pooled_features``), one row per
            user, any number of ids each (:func:`pooled_kjt` builds it from a [U, P] id
            matrix).
        dense: [U, F_dense] dense features per user.

    Returns:
        Tensor: [K] logits, one per candidate.

    Example::

        scorer = torch.jit.script(DINScorer(trained).eval())  # one group: item, cate
        logits = scorer([hist], [torch.tensor([3])], cands, torch.tensor([2]),
                        pooled_kjt(scorer.pooled_features, user_ids), dense)
    """

    def __init__(self, model: DINModel, max_history: int = 0) -> None:
        super().__init__()
        if max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {max_history}")
        interaction = model.interaction
        self.max_history: int = max_history
        self.group_names: List[str] = list(interaction.group_names)
        # Candidate features in the order the model's KJT lists them (a feature shared by
        # groups once); each group's history columns pair with its candidate features.
        self.features: List[str] = []
        for g in interaction.groups:
            self.features += [f for f in g.candidate_features if f not in self.features]
        self.group_features: List[List[str]] = [list(g.candidate_features)
                                                for g in interaction.groups]
        self.history_features: List[List[str]] = [list(g.history_features)
                                                  for g in interaction.groups]
        self.pooled_features: List[str] = list(model.pooled_keys)
        self.dense_in_features: int = model.dense_in_features
        self.model = model

    def forward(
        self,
        history_ids: List[Tensor],
        history_lengths: List[Tensor],
        candidate_ids: Tensor,
        candidate_counts: Tensor,
        pooled: KeyedJaggedTensor,
        dense: Tensor,
    ) -> Tensor:
        sequence = request_kjt(self.features, self.history_features, history_ids,
                               history_lengths, candidate_ids, candidate_counts,
                               self.max_history)
        return self.model.forward_grouped(sequence, pooled, dense)


# An fx leaf here too (fx wraps a name in the module that calls it), so that the int8 scorer
# follows TorchRec's inference recipe: torchrec.fx.symbolic_trace, then torch.jit.script.
torch.fx.wrap("request_kjt")
