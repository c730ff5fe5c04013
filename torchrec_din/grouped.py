"""The grouped form for any model: K_u candidates against one history per user.

Serving (and training on a positive with its negatives) scores many candidates against the
same history. In the grouped form the candidate features of the sequence KJT carry K_u ids
per user while the history features carry the user's behaviours once;
``DINInteraction.forward_grouped`` then looks each history up and computes its
candidate-independent attention part once, and ``DINInteraction.history_of_candidates``
says which user each of the K candidate rows belongs to, to spread per-user rows (pooled
embeddings, dense features) over the candidates. This module builds those inputs from plain
request tensors; ``torchrec_din.serve.DINScorer`` is this for the package's own models, and
``examples/your_own_model.py`` (``MyRanker.score_grouped``) for a ranker of one's own.

Example::

    kjt = request_kjt(["item", "cate"], [["hist_item", "hist_cate"]], [hist_ids],
                      [hist_lengths], candidate_ids, candidate_counts)
    emb = ec(kjt)
    rows = din.history_of_candidates(emb)            # [K]: user of each candidate
    x = torch.cat([din.candidates_grouped(emb), din.forward_grouped(emb),
                   user_bags.index_select(0, rows)], 1)
"""

from typing import List, Tuple

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.ops import lengths_to_segment_ids


def pooled_kjt(pooled_features: List[str], ids: Tensor) -> KeyedJaggedTensor:
    """Pooled features with one id each: ``ids`` [U, P] (columns in ``pooled_features``
    order) as the KeyedJaggedTensor :class:`DINScorer` takes."""
    return KeyedJaggedTensor(
        keys=pooled_features, values=ids.t().reshape(-1),
        lengths=torch.ones(ids.numel(), dtype=torch.long, device=ids.device))


def newest(ids: Tensor, lengths: Tensor, max_history: int) -> Tuple[Tensor, Tensor]:
    """Each user's newest ``max_history`` rows of ``ids`` (users back to back, each
    oldest..newest, ``lengths`` [U] rows each) and the new lengths."""
    ends = torch.cumsum(lengths, 0).index_select(0, lengths_to_segment_ids(lengths, ids.size(0)))
    from_end = ends - torch.arange(ids.size(0), device=ids.device)
    return ids[from_end <= max_history], lengths.clamp(max=max_history)


def request_kjt(
    features: List[str],
    history_features: List[List[str]],
    history_ids: List[Tensor],
    history_lengths: List[Tensor],
    candidate_ids: Tensor,
    candidate_counts: Tensor,
    max_history: int = 0,
) -> KeyedJaggedTensor:
    """The model's sequence features in the grouped form: candidate features with K_u ids
    per user, each group's history features with the user's behaviours in that group (the
    newest ``max_history``, 0: all)."""
    groups = len(history_features)
    if len(history_ids) != groups or len(history_lengths) != groups:
        raise ValueError("expected one history_ids and one history_lengths tensor per "
                         "attention group (" + str(groups) + "), got "
                         + str(len(history_ids)) + " and " + str(len(history_lengths)))
    keys: List[str] = []
    values: List[Tensor] = []
    lengths: List[Tensor] = []
    for i in range(len(features)):
        keys.append(features[i])
        values.append(candidate_ids[:, i])
        lengths.append(candidate_counts)
    for g in range(groups):
        ids, group_lengths = history_ids[g], history_lengths[g]
        if ids.dim() != 2 or ids.size(1) != len(history_features[g]):
            raise ValueError("history_ids[" + str(g) + "] must be [N, "
                             + str(len(history_features[g])) + "] (columns "
                             + ", ".join(history_features[g]) + "), got "
                             + str(list(ids.shape)))
        if max_history > 0:
            ids, group_lengths = newest(ids, group_lengths, max_history)
        for i in range(len(history_features[g])):
            keys.append(history_features[g][i])
            values.append(ids[:, i])
            lengths.append(group_lengths)
    return KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths))


# A leaf in fx graphs (it builds KeyedJaggedTensors and loops over the request's lists), so
# that the int8 scorer can follow TorchRec's inference recipe: torchrec.fx.symbolic_trace,
# then torch.jit.script.
torch.fx.wrap("request_kjt")
