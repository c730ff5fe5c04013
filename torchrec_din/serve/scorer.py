"""Serving: score K_u candidates per user against one history, the history embedded once.

At serving time a user arrives with one history and many candidates. The padded way copies
the history once per candidate. Here each behaviour is embedded once, the
candidate-independent part of the first attention layer, ``e_j (W_e + W_d)``, is computed
once per behaviour, the candidate part ``v_k (W_v - W_d) + b`` once per candidate, and only
``(e_j * v_k) W_p`` and the small layers after it run per (candidate, behaviour) pair.
"""

from typing import List, Optional

import torch
from torch import nn, Tensor

from torchrec_din.models.din import DINModel
from torchrec_din.modules.interaction import DINInteraction, SumPoolingInteraction


class DINScorer(nn.Module):
    """A TorchScript-able scorer sharing the parameters of a trained DIN or BaseModel.

    Supports models with one attention group whose candidate feature i and history feature
    i look up the same table (as ``torchrec_din.train`` builds them), pooled features with one
    id per user, and dense features per user. Call ``.eval()`` first (Dice then uses its
    running statistics, so every score is independent of the rest of the request).

    Args:
        model (DINModel): a trained DIN or BaseModel (unsharded).
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
        self.max_history: int = max_history
        interaction = model.interaction
        if len(interaction.groups) != 1:
            raise ValueError("DINScorer supports models with exactly one attention group")
        group = interaction.groups[0]
        ec = model.embedding_collection
        table_of = {f: c.name for c in ec.embedding_configs() for f in c.feature_names}
        for cand, hist in zip(group.candidate_features, group.history_features):
            if table_of[cand] != table_of[hist]:
                raise ValueError(f"candidate feature {cand!r} and history feature {hist!r} "
                                 "must share a table for DINScorer")
        self.features: List[str] = list(group.candidate_features)
        self.history_features: List[str] = list(group.history_features)
        self.tables = nn.ModuleList([ec.embeddings[table_of[f]] for f in self.features])
        self.pooled_features: List[str] = list(model.pooled_keys)
        bags: List[nn.Module] = []
        if model.embedding_bag_collection is not None:
            ebc = model.embedding_bag_collection
            bag_of = {f: c.name for c in ebc.embedding_bag_configs() for f in c.feature_names}
            bags = [ebc.embedding_bags[bag_of[f]] for f in self.pooled_features]
        self.bags = nn.ModuleList(bags)
        self.dense_in_features: int = model.dense_in_features
        self.use_attention: bool = isinstance(interaction, DINInteraction)
        if not self.use_attention and not isinstance(interaction, SumPoolingInteraction):
            raise ValueError(f"unsupported interaction {type(interaction).__name__}")
        self.dim: int = interaction.group_dims[0]
        self.softmax: bool = False
        self.input_layer: Optional[nn.Linear] = None
        if self.use_attention:
            attention = interaction.attention[0]
            unit = attention.unit
            if unit.outer_weight is not None:
                raise ValueError("DINScorer does not support use_outer_product=True")
            self.softmax = attention.normalization == "softmax"
            self.input_layer = unit.input_layer
            self.input_activation = unit.input_activation
            self.hidden = unit.hidden
            self.output_layer = unit.output_layer
        self.over_arch = model.over_arch
        self.final = model.final

    def _embed(self, ids: Tensor) -> Tensor:
        parts: List[Tensor] = []
        for i, table in enumerate(self.tables):
            parts.append(table(ids[:, i]))
        return torch.cat(parts, dim=1)

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
        e = self._embed(history_ids)        # [N, D]: each behaviour embedded once
        v = self._embed(candidate_ids)      # [K, D]
        k_total = v.size(0)
        users = torch.arange(num_users, device=v.device)
        cand_user = torch.repeat_interleave(users, candidate_counts, output_size=k_total)
        if self.use_attention:
            layer = self.input_layer
            assert layer is not None
            w_e, w_v, w_d, w_p = layer.weight.split(self.dim, dim=1)
            behaviour_part = e @ (w_e + w_d).t()                          # [N, H], once
            candidate_part = torch.addmm(layer.bias, v, (w_v - w_d).t())  # [K, H], once
            # Pairs (candidate k, behaviour j of k's user), grouped by candidate.
            hist_start = torch.cumsum(history_lengths, 0) - history_lengths
            pair_len = history_lengths.index_select(0, cand_user)
            num_pairs = int(pair_len.sum().item())
            pair_cand = torch.repeat_interleave(
                torch.arange(k_total, device=v.device), pair_len, output_size=num_pairs)
            pair_first = torch.cumsum(pair_len, 0) - pair_len
            pair_beh = (hist_start.index_select(0, cand_user).index_select(0, pair_cand)
                        + torch.arange(num_pairs, device=v.device)
                        - pair_first.index_select(0, pair_cand))
            e_pair = e.index_select(0, pair_beh)
            hidden = torch.addmm(
                behaviour_part.index_select(0, pair_beh) + candidate_part.index_select(0, pair_cand),
                e_pair * v.index_select(0, pair_cand), w_p.t())
            hidden = self.hidden(self.input_activation(hidden))
            scores = self.output_layer(hidden).squeeze(1)                  # [P]
            if self.softmax:
                seg_max = torch.full((k_total,), float("-inf"), dtype=scores.dtype,
                                     device=scores.device).scatter_reduce(
                    0, pair_cand, scores, reduce="amax", include_self=True)
                exp = torch.exp(scores - seg_max.index_select(0, pair_cand))
                denom = torch.zeros(k_total, dtype=scores.dtype,
                                    device=scores.device).index_add(0, pair_cand, exp)
                scores = exp / denom.index_select(0, pair_cand)
            interest = torch.zeros(k_total, self.dim, dtype=e.dtype, device=e.device).index_add(
                0, pair_cand, e_pair * scores.unsqueeze(1))
        else:
            seg = torch.repeat_interleave(users, history_lengths, output_size=e.size(0))
            per_user = torch.zeros(num_users, self.dim, dtype=e.dtype,
                                   device=e.device).index_add(0, seg, e)
            interest = per_user.index_select(0, cand_user)
        parts: List[Tensor] = [v, interest]
        for i, bag in enumerate(self.bags):
            # 2-D input: one bag of one id per user (no offsets, whatever the bag's
            # include_last_offset setting).
            parts.append(bag(pooled_ids[:, i:i + 1]).index_select(0, cand_user))
        if self.dense_in_features > 0:
            parts.append(dense.index_select(0, cand_user))
        return self.final(self.over_arch(torch.cat(parts, dim=1))).squeeze(1)
