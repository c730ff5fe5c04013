"""Interactions from TorchRec's EmbeddingCollection output to DIN interest vectors."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din.checks import (
    check_candidate_lengths,
    check_equal_lengths,
    check_feature_dim,
    check_lengths,
    describe,
    get_feature,
)
from torchrec_din.modules.attention import JaggedTargetAttention
from torchrec_din.ops import lengths_to_segment_ids, segment_sum


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


def merge_embeddings(outputs: List[Dict[str, JaggedTensor]],
                     features: List[List[str]]) -> Dict[str, JaggedTensor]:
    """The outputs of several EmbeddingCollections (e.g. one per embedding dim) as one dict,
    for a :class:`DINInteraction` whose groups span them: ``features[i]`` are the features
    taken from ``outputs[i]`` (``DINInteraction.merge`` knows them when it was built with
    ``from_collections``).

    Use this rather than ``{**ec_a(kjt_a), **ec_b(kjt_b)}``: TrainPipelineSparseDist traces
    the model with the sharded collections as leaves, so their outputs are fx proxies, which
    ``**`` cannot unpack ("Proxy object cannot be iterated"); indexing them by a known key
    traces.

    Args:
        outputs (List[Dict[str, JaggedTensor]]): the collections' outputs, in order.
        features (List[List[str]]): the feature names to take from each.

    Returns:
        Dict[str, JaggedTensor]: feature -> its JaggedTensor.

    Example::

        embeddings = merge_embeddings([ec_items(kjt_a), ec_cates(kjt_b)],
                                      [["item", "hist_item"], ["cate", "hist_cate"]])
    """
    if len(outputs) != len(features):
        raise ValueError("merge_embeddings: " + str(len(outputs)) + " outputs but features "
                         "for " + str(len(features)) + " collections")
    merged: Dict[str, JaggedTensor] = {}
    for i in range(len(features)):
        for key in features[i]:
            merged[key] = outputs[i][key]
    return merged


def feature_specs(collections: Sequence[nn.Module]) -> Tuple[Dict[str, int], Dict[str, str]]:
    """Embedding dim and table name of every feature of TorchRec embedding collections.

    Args:
        collections: ``EmbeddingCollection`` s (and optionally ``EmbeddingBagCollection`` s,
            whose features are marked pooled), or their quantized versions: anything with
            ``embedding_configs()`` or ``embedding_bag_configs()``.

    Returns:
        (feature -> embedding dim, feature -> table name). Pooled features get the table
        name suffixed with `` (EmbeddingBagCollection)`` so errors can say so.

    Example::

        dims, tables = feature_specs([ec_items, ec_cates])
    """
    dims: Dict[str, int] = {}
    tables: Dict[str, str] = {}
    for collection in collections:
        if hasattr(collection, "embedding_configs"):
            configs, suffix = collection.embedding_configs(), ""
        elif hasattr(collection, "embedding_bag_configs"):
            configs, suffix = collection.embedding_bag_configs(), _POOLED
        else:
            raise ValueError(
                f"{type(collection).__name__} is not a TorchRec embedding collection (it has "
                "neither embedding_configs() nor embedding_bag_configs())"
            )
        for config in configs:
            for f in config.feature_names:
                dims[f] = config.embedding_dim
                tables[f] = config.name + suffix
    return dims, tables


_POOLED = " (EmbeddingBagCollection)"

# Leaves in fx graphs: they branch on shapes, types or data.
torch.fx.wrap("get_feature")
torch.fx.wrap("check_feature_dim")
torch.fx.wrap("check_candidate_lengths")
torch.fx.wrap("check_equal_lengths")
torch.fx.wrap("check_lengths")
torch.fx.wrap("segment_sum")
torch.fx.wrap("lengths_to_segment_ids")


class _GroupedInteraction(nn.Module):
    """Shared by the interactions: group bookkeeping and the per-group feature gathering."""

    def __init__(
        self,
        groups: Sequence[AttentionGroup],
        embedding_dim: Union[int, Dict[str, int]],
        feature_tables: Optional[Dict[str, str]] = None,
        validate_inputs: bool = True,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        del device  # no parameters here; the subclasses' own ones take it
        if not groups:
            raise ValueError("at least one AttentionGroup is needed")
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        features = [f for g in groups for f in g.candidate_features + g.history_features]
        if isinstance(embedding_dim, int):
            dims = {f: embedding_dim for f in features}
        else:
            missing = [f for f in features if f not in embedding_dim]
            if missing:
                raise ValueError(f"embedding_dim has no dim for feature(s) {missing}; it "
                                 f"covers {sorted(embedding_dim)}")
            dims = {f: int(embedding_dim[f]) for f in features}
        tables = dict(feature_tables or {})
        for f in features:
            tables.setdefault(f, "")
            if tables[f].endswith(_POOLED):
                raise ValueError(
                    f"feature {f!r} (table {tables[f][:-len(_POOLED)]!r}) comes from an "
                    "EmbeddingBagCollection, which pools each sample's ids into one vector; "
                    "candidate and history features need an EmbeddingCollection (one row "
                    "per id)")
        for g in groups:
            for cand, hist in zip(g.candidate_features, g.history_features):
                if dims[cand] != dims[hist]:
                    raise ValueError(
                        f"group {g.name!r}: candidate {describe(cand, tables[cand])} has dim "
                        f"{dims[cand]} and history {describe(hist, tables[hist])} has dim "
                        f"{dims[hist]}; they pair up, so their embedding dims must be equal")
        # Python-side description; the plain lists below are what scripted code reads.
        self.groups: Tuple[AttentionGroup, ...] = tuple(groups)
        self.group_names: List[str] = names
        self.candidate_features: List[List[str]] = [list(g.candidate_features) for g in groups]
        self.history_features: List[List[str]] = [list(g.history_features) for g in groups]
        self.feature_dims: Dict[str, int] = dims
        self.feature_tables: Dict[str, str] = {f: tables[f] for f in features}
        self.validate_inputs = validate_inputs
        self.group_dims: List[int] = [
            sum(dims[f] for f in g.candidate_features) for g in groups
        ]
        self.output_dim: int = sum(self.group_dims)
        # Candidate features in group order, each once (groups may share the candidate, e.g.
        # clicks and purchases against the same item), with the first group that has it.
        self.unique_candidates: List[str] = []
        self.unique_candidate_group: List[int] = []
        for i, g in enumerate(groups):
            for f in g.candidate_features:
                if f not in self.unique_candidates:
                    self.unique_candidates.append(f)
                    self.unique_candidate_group.append(i)
        self.candidate_dim: int = sum(dims[f] for f in self.unique_candidates)
        # Set by from_collections: the features each collection passed there holds.
        self.collection_features: List[List[str]] = []

    @classmethod
    def from_collections(
        cls, groups: Sequence[AttentionGroup], collections: Sequence[nn.Module], **kwargs: Any
    ) -> Any:
        """Build with each feature's dim and table read from the embedding collections
        (``EmbeddingCollection`` and friends, sharded or not); ``kwargs`` go to the
        constructor (``hidden_units``, ``activation``, ``device``, ...)."""
        dims, tables = feature_specs(collections)
        held = [list(feature_specs([c])[0]) for c in collections]  # per collection
        needed = [f for g in groups for f in g.candidate_features + g.history_features]
        missing = sorted({f for f in needed if f not in dims})
        if missing:
            raise ValueError(f"from_collections: feature(s) {missing} are in no collection "
                             f"passed; the {len(collections)} collection(s) hold "
                             f"{[sorted(h) for h in held]}")
        module = cls(groups, dims, feature_tables=tables, **kwargs)
        module.collection_features = [[f for f in h if f in needed] for h in held]
        return module

    def merge(self, outputs: List[Dict[str, JaggedTensor]]) -> Dict[str, JaggedTensor]:
        """The collections' outputs as the one dict this module reads: pass them in the
        order of ``from_collections``' ``collections`` (see :func:`merge_embeddings`)."""
        if len(self.collection_features) == 0:
            raise ValueError("merge needs the module built with from_collections (it knows "
                             "which features each collection holds)")
        return merge_embeddings(outputs, self.collection_features)

    def _feature(self, embeddings: Dict[str, JaggedTensor], name: str, group: int) -> JaggedTensor:
        table = self.feature_tables[name]
        jt = get_feature(embeddings, name, table, self.group_names[group])
        check_feature_dim(jt.values(), name, table, self.feature_dims[name],
                          self.group_names[group])
        return jt

    def group_candidates(
        self, embeddings: Dict[str, JaggedTensor], group: int, grouped: bool = False
    ) -> Tensor:
        """Concatenated candidate embeddings of group ``group``: [B, group_dims[group]], or
        with ``grouped`` [K, group_dims[group]] (K_b candidates per history)."""
        parts: List[Tensor] = []
        names = self.candidate_features[group]
        first = self._feature(embeddings, names[0], group)
        for name in names:
            jt = self._feature(embeddings, name, group)
            if grouped:
                check_equal_lengths(names[0], name, first.lengths(), jt.lengths(),
                                    self.validate_inputs)
            elif self.validate_inputs:
                check_candidate_lengths(jt.lengths(), name, self.feature_tables[name])
            parts.append(jt.values())
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def num_candidates(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        """[B] candidates per history (grouped form): the first candidate feature's lengths;
        every group's candidate features must have the same."""
        first_name = self.candidate_features[0][0]
        first = self._feature(embeddings, first_name, 0)
        for group in range(1, len(self.group_names)):
            name = self.candidate_features[group][0]
            check_equal_lengths(first_name, name, first.lengths(),
                                self._feature(embeddings, name, group).lengths(),
                                self.validate_inputs)
        return first.lengths()

    @torch.jit.export
    def history_of_candidates(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        """Grouped form: the history (sample) each of the K candidate rows belongs to: [K]."""
        num = self.num_candidates(embeddings)
        k = self._feature(embeddings, self.candidate_features[0][0], 0).values().size(0)
        return lengths_to_segment_ids(num, k)

    def _unique_candidates(self, embeddings: Dict[str, JaggedTensor], grouped: bool) -> Tensor:
        parts: List[Tensor] = []
        first_name = self.unique_candidates[0]
        first = self._feature(embeddings, first_name, 0)
        for name, group in zip(self.unique_candidates, self.unique_candidate_group):
            jt = self._feature(embeddings, name, group)
            if grouped:
                check_equal_lengths(first_name, name, first.lengths(), jt.lengths(),
                                    self.validate_inputs)
            elif self.validate_inputs:
                check_candidate_lengths(jt.lengths(), name, self.feature_tables[name])
            parts.append(jt.values())
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @torch.jit.export
    def candidates_grouped(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        """Candidate embeddings in the grouped form, each candidate feature once:
        [K, candidate_dim]."""
        return self._unique_candidates(embeddings, True)

    def group_history(
        self, embeddings: Dict[str, JaggedTensor], group: int
    ) -> Tuple[Tensor, Tensor]:
        """Concatenated history embeddings of group ``group``: values [N, group_dims[group]],
        lengths [B]."""
        names = self.history_features[group]
        first = self._feature(embeddings, names[0], group)
        parts: List[Tensor] = [first.values()]
        for name in names[1:]:
            jt = self._feature(embeddings, name, group)
            check_equal_lengths(names[0], name, first.lengths(), jt.lengths(),
                                self.validate_inputs)
            parts.append(jt.values())
        values = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return values, first.lengths()

    @torch.jit.export
    def candidates(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        """Candidate embeddings, each candidate feature once (a feature shared by several
        groups is not repeated): [B, candidate_dim]."""
        return self._unique_candidates(embeddings, False)


class DINInteraction(_GroupedInteraction):
    """Target attention of each group's candidate over its history, from TorchRec outputs.

    Takes the ``Dict[str, JaggedTensor]`` an ``EmbeddingCollection`` returns (or several
    merged, e.g. one per embedding dim) and gives one interest vector per group,
    concatenated. Drop it into any TorchRec model whose collections hold the candidate and
    history features (ideally sharing a table per id space). It scripts, exports (B and N
    dynamic) and traces with ``torchrec.fx``.

    Args:
        groups (Sequence[AttentionGroup]): candidate -> history feature groups.
        embedding_dim (Union[int, Dict[str, int]]): D of every feature, or feature -> D
            (a group may mix dims: item 32 + category 8 gives a 40-wide query and keys).
            :meth:`from_collections` reads them from the collections.
        hidden_units, activation, normalization, use_outer_product: as for
            :class:`JaggedTargetAttention`, shared by all groups.
        feature_tables (Optional[Dict[str, str]]): feature -> table name, for messages.
        validate_inputs (bool): value checks on every call (candidates have one id per
            sample, a group's histories have equal lengths, lengths match values): a few
            host reads (device syncs). Shape and dim checks always run (free). Off: no sync.
        device (Optional[torch.device]): where the attention parameters live (as for
            TorchRec's modules; ``from_collections`` passes it through).

    Shapes:
        input: candidate features with values [B, D_f] (one id per sample), history
        features with values [N_g, D_f] per group; output: [B, sum of group widths].

    Example::

        ec = EmbeddingCollection(tables=[
            EmbeddingConfig(name="item", embedding_dim=16, num_embeddings=100,
                            feature_names=["item", "hist_item"]),
        ])
        din = DINInteraction.from_collections(
            [AttentionGroup("item", ["item"], ["hist_item"])], [ec])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["item", "hist_item"], values=torch.tensor([1, 2, 3, 4, 5]),
            lengths=torch.tensor([1, 1, 2, 1]))
        interest = din(ec(kjt))  # [2, 16]
    """

    def __init__(
        self,
        groups: Sequence[AttentionGroup],
        embedding_dim: Union[int, Dict[str, int]],
        hidden_units: Sequence[int] = (80, 40),
        activation: str = "sigmoid",
        normalization: str = "none",
        use_outer_product: bool = False,
        feature_tables: Optional[Dict[str, str]] = None,
        validate_inputs: bool = True,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(groups, embedding_dim, feature_tables, validate_inputs)
        # A list in group order, not a ModuleDict: group names such as "items" or "keys"
        # would clash with ModuleDict's own attributes.
        self.attention = nn.ModuleList(
            [
                JaggedTargetAttention(
                    dim, hidden_units, activation, normalization, use_outer_product,
                    validate_inputs, device,
                )
                for dim in self.group_dims
            ]
        )

    def forward(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        outputs: List[Tensor] = []
        for i, attention in enumerate(self.attention):
            query = self.group_candidates(embeddings, i)
            values, lengths = self.group_history(embeddings, i)
            outputs.append(attention.attend(query, values, lengths)[0])
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]

    @torch.jit.export
    def forward_grouped(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        """Interest vectors [K, output_dim] when candidate features carry K_b ids per
        history (e.g. a request's candidates, or a positive and its negatives): each
        history is looked up and its candidate-independent attention part computed once."""
        num_candidates = self.num_candidates(embeddings)
        outputs: List[Tensor] = []
        for i, attention in enumerate(self.attention):
            query = self.group_candidates(embeddings, i, True)
            values, lengths = self.group_history(embeddings, i)
            outputs.append(attention.attend_grouped(query, values, lengths, num_candidates,
                                                    None)[0])
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


class SumPoolingInteraction(_GroupedInteraction):
    """The paper's BaseModel pooling: each group's history embeddings summed per sample.

    Args:
        groups (Sequence[AttentionGroup]): candidate -> history groups (candidates are
            validated but only the histories are pooled).
        embedding_dim (Union[int, Dict[str, int]]): D of every feature, or feature -> D.
        feature_tables (Optional[Dict[str, str]]): feature -> table name, for messages.
        validate_inputs (bool): value checks, as for :class:`DINInteraction`.

    Shapes:
        output: [B, sum of group widths]; an empty history gives zeros.

    Example::

        pool = SumPoolingInteraction([AttentionGroup("item", ["item"], ["hist_item"])], 16)
        pooled = pool(ec(kjt))  # [B, 16]
    """

    def forward(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        outputs: List[Tensor] = []
        for i in range(len(self.group_names)):
            values, lengths = self.group_history(embeddings, i)
            if self.validate_inputs:
                check_lengths(values, lengths, self.history_features[i][0])
            outputs.append(segment_sum(values, lengths, None))
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]

    @torch.jit.export
    def forward_grouped(self, embeddings: Dict[str, JaggedTensor]) -> Tensor:
        """Grouped form: each history pooled once, repeated for its K_b candidates: [K, w]."""
        return self.forward(embeddings).index_select(0, self.history_of_candidates(embeddings))
