"""Interactions from TorchRec's EmbeddingCollection output to DIN interest vectors."""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din.modules.attention import JaggedTargetAttention
from torchrec_din.ops import segment_sum

torch.fx.wrap("segment_sum")  # a leaf in fx graphs (its shape logic is not traceable)


@dataclass(frozen=True)
class AttentionGroup:
    """Candidate features attended against the history features of the same id spaces.

    The embeddings of a group are concatenated per sample (candidate) and per behaviour
    (history) in the order given, so ``candidate_features[i]`` and ``history_features[i]``
    should look up the same table, e.g. ``(["item", "cate"], ["hist_item", "hist_cate"])``.

    Args:
        name (str): group name, unique within an interaction (shown in errors and logs).
        candidate_features (Sequence[str]): features with exactly one id per sample.
        history_features (Sequence[str]): behaviour sequences, all of equal length per sample.
    """

    name: str
    candidate_features: Tuple[str, ...]
    history_features: Tuple[str, ...]

    def __init__(
        self, name: str, candidate_features: Sequence[str], history_features: Sequence[str]
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "candidate_features", tuple(candidate_features))
        object.__setattr__(self, "history_features", tuple(history_features))
        if not candidate_features:
            raise ValueError(f"group {name!r}: candidate_features is empty")
        if len(candidate_features) != len(history_features):
            raise ValueError(
                f"group {name!r}: {len(candidate_features)} candidate features "
                f"{list(candidate_features)} but {len(history_features)} history features "
                f"{list(history_features)}; they pair up one to one"
            )


@torch.fx.wrap
def _check_candidate(name: str, jt: JaggedTensor) -> None:
    lengths = jt.lengths()
    bad = torch.nonzero(lengths != 1)
    if bad.numel() > 0:
        row = int(bad[0].item())
        raise ValueError(
            f"candidate feature {name!r} must have exactly one id per sample; "
            f"row {row} has {int(lengths[row].item())}"
        )


@torch.fx.wrap
def _check_same_lengths(first: str, other: str, a: JaggedTensor, b: JaggedTensor) -> None:
    la, lb = a.lengths(), b.lengths()
    if la.shape != lb.shape:
        raise ValueError(
            f"history features {first!r} and {other!r} have {la.numel()} and {lb.numel()} "
            "samples; they must be equal"
        )
    bad = torch.nonzero(la != lb)
    if bad.numel() > 0:
        row = int(bad[0].item())
        raise ValueError(
            f"history features {first!r} and {other!r} must have equal lengths per sample; "
            f"row {row} has {int(la[row].item())} vs {int(lb[row].item())}"
        )


@torch.fx.wrap
def _get_feature(embeddings: Dict[str, JaggedTensor], name: str) -> JaggedTensor:
    # Index rather than test membership: a sharded collection returns a LazyAwaitable dict,
    # which resolves on __getitem__ but not on ``in``.
    try:
        return embeddings[name]
    except KeyError:
        raise ValueError(
            f"feature {name!r} is missing from the embeddings; got {sorted(embeddings.keys())}"
        ) from None


def group_candidates(embeddings: Dict[str, JaggedTensor], group: AttentionGroup) -> Tensor:
    """Concatenated candidate embeddings of a group: [B, len(features) * D]."""
    parts: List[Tensor] = []
    for name in group.candidate_features:
        jt = _get_feature(embeddings, name)
        _check_candidate(name, jt)
        parts.append(jt.values())
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def group_history(
    embeddings: Dict[str, JaggedTensor], group: AttentionGroup
) -> Tuple[Tensor, Tensor]:
    """Concatenated history embeddings of a group: values [N, len(features) * D], lengths [B]."""
    first_name = group.history_features[0]
    first = _get_feature(embeddings, first_name)
    parts: List[Tensor] = [first.values()]
    for name in group.history_features[1:]:
        jt = _get_feature(embeddings, name)
        _check_same_lengths(first_name, name, first, jt)
        parts.append(jt.values())
    values = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return values, first.lengths()


class _GroupedInteraction(nn.Module):
    def __init__(self, groups: Sequence[AttentionGroup], embedding_dim: int) -> None:
        super().__init__()
        if not groups:
            raise ValueError("at least one AttentionGroup is needed")
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        self.groups: List[AttentionGroup] = list(groups)
        self.embedding_dim = embedding_dim
        self.group_dims: List[int] = [len(g.candidate_features) * embedding_dim for g in groups]
        self.output_dim: int = sum(self.group_dims)

    def candidates(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        """Candidate embeddings of all groups, concatenated: [B, output_dim]."""
        parts = [group_candidates(embeddings, g) for g in self.groups]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class DINInteraction(_GroupedInteraction):
    """Target attention of each group's candidate over its history, from TorchRec outputs.

    Takes the ``Dict[str, JaggedTensor]`` an ``EmbeddingCollection`` returns and gives one
    interest vector per group, concatenated. Drop it into any TorchRec model whose
    EmbeddingCollection holds the candidate and history features (ideally sharing a table
    per id space).

    Args:
        groups (Sequence[AttentionGroup]): candidate -> history feature groups.
        embedding_dim (int): D of every feature (an EmbeddingCollection has one D).
        hidden_units, activation, normalization, use_outer_product: as for
            :class:`JaggedTargetAttention`, shared by all groups.

    Shapes:
        input: candidate features with values [B, D] (one id per sample), history features
        with values [N_g, D] per group; output: [B, sum over groups of len(features) * D].

    Example::

        ec = EmbeddingCollection(tables=[
            EmbeddingConfig(name="item", embedding_dim=16, num_embeddings=100,
                            feature_names=["item", "hist_item"]),
        ])
        din = DINInteraction([AttentionGroup("item", ["item"], ["hist_item"])], 16)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["item", "hist_item"], values=torch.tensor([1, 2, 3, 4, 5]),
            lengths=torch.tensor([1, 1, 2, 1]))
        interest = din(ec(kjt))  # [2, 16]
    """

    def __init__(
        self,
        groups: Sequence[AttentionGroup],
        embedding_dim: int,
        hidden_units: Sequence[int] = (80, 40),
        activation: str = "sigmoid",
        normalization: str = "none",
        use_outer_product: bool = False,
    ) -> None:
        super().__init__(groups, embedding_dim)
        # A list in group order, not a ModuleDict: group names such as "items" or "keys"
        # would clash with ModuleDict's own attributes.
        self.attention = nn.ModuleList(
            [
                JaggedTargetAttention(
                    dim, hidden_units, activation, normalization, use_outer_product
                )
                for dim in self.group_dims
            ]
        )

    def forward(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        outputs: List[Tensor] = []
        for group, attention in zip(self.groups, self.attention):
            query = group_candidates(embeddings, group)
            values, lengths = group_history(embeddings, group)
            outputs.append(attention.attend(query, values, lengths)[0])
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


class SumPoolingInteraction(_GroupedInteraction):
    """The paper's BaseModel pooling: each group's history embeddings summed per sample.

    Args:
        groups (Sequence[AttentionGroup]): candidate -> history groups (candidates are
            validated but only the histories are pooled).
        embedding_dim (int): D of every feature.

    Shapes:
        output: [B, sum over groups of len(features) * D]; an empty history gives zeros.

    Example::

        pool = SumPoolingInteraction([AttentionGroup("item", ["item"], ["hist_item"])], 16)
        pooled = pool(ec(kjt))  # [B, 16]
    """

    def forward(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        outputs: List[Tensor] = []
        for group in self.groups:
            values, lengths = group_history(embeddings, group)
            outputs.append(segment_sum(values, lengths))
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
