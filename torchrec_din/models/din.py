"""DIN and the paper's BaseModel, built from TorchRec collections and our interactions."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn, Tensor
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingCollection,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_din.batch import DINBatch
from torchrec_din.checks import (
    check_dense,
    check_kjt,
    check_labels,
    check_pooled_rows,
    set_validate_inputs,
)
from torchrec_din.modules.interaction import (
    AttentionGroup,
    DINInteraction,
    feature_specs,
    SumPoolingInteraction,
)
from torchrec_din.modules.mlp import ActivationMLP

def _required(x: Optional[Tensor], name: str) -> Tensor:
    # A function, not an assert: after fx tracing, TorchScript still sees the refinement.
    if x is None:
        raise ValueError(name + " is None but the model needs them")
    return x


def _required_kjt(x: Optional[KeyedJaggedTensor], name: str) -> KeyedJaggedTensor:
    if x is None:
        raise ValueError(name + " is None but the model needs them")
    return x


# Leaves in fx graphs: the checks branch on data, which fx cannot trace.
torch.fx.wrap("_required")
torch.fx.wrap("_required_kjt")
torch.fx.wrap("check_dense")
torch.fx.wrap("check_kjt")
torch.fx.wrap("check_labels")
torch.fx.wrap("check_pooled_rows")


class DINModel(nn.Module):
    """Candidate embeddings, a grouped interaction, pooled and dense features, an over arch.

    The over arch sees ``[candidates, interest, pooled features, dense features]`` and a
    final linear layer gives one logit per sample.

    Args:
        embedding_collection (EmbeddingCollection): tables for candidate and history
            features; one table per id space shared by both (e.g. ``feature_names=["item",
            "hist_item"]``).
        interaction (nn.Module): :class:`DINInteraction` (DIN) or
            :class:`SumPoolingInteraction` (BaseModel); maps the collection's output to
            [B, interaction.output_dim].
        embedding_bag_collection (Optional[EmbeddingBagCollection]): pooled user/context
            features.
        dense_in_features (int): F, width of the dense features (0 for none).
        over_arch_layer_sizes (Sequence[int]): hidden widths of the over arch.
        over_arch_activation (str): "prelu" or "dice" (any of ``make_activation``).
        dropout (float): dropout after each over-arch hidden layer.
        validate_inputs (bool): check every batch (ids in range, lengths, keys, finite dense
            features) with clear errors; costs one vectorised pass over the ids and a few
            host reads (device syncs). Off: a forward and backward do no host sync (shape
            checks still run; they are free). Sets the interaction's switch too.
        device (Optional[torch.device]): where the over arch lives (the collections and
            the interaction carry their own, as TorchRec's modules do).

    Shapes:
        sequence_features: KJT over the collection's features (candidates: one id per
        sample); pooled_features: KJT over the bag collection's features; dense_features:
        [B, F]; output: logits [B].

    Example::

        model = DIN(ec, groups=[AttentionGroup("item", ["item"], ["hist_item"])])
        logits = model(kjt)  # [B]
    """

    def __init__(
        self,
        embedding_collection: EmbeddingCollection,
        interaction: nn.Module,
        embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
        dense_in_features: int = 0,
        over_arch_layer_sizes: Sequence[int] = (200, 80),
        over_arch_activation: str = "prelu",
        dropout: float = 0.0,
        validate_inputs: bool = True,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        set_validate_inputs(interaction, validate_inputs)  # one switch for the whole model
        self.validate_inputs = validate_inputs
        self.embedding_collection = embedding_collection
        self.interaction = interaction
        self.embedding_bag_collection = embedding_bag_collection
        self.dense_in_features = dense_in_features
        self.pooled_keys: List[str] = []
        # feature -> rows of its table, and -> table name, for input validation.
        self.sequence_rows: Dict[str, int] = {}
        self.pooled_rows: Dict[str, int] = {}
        self.feature_tables: Dict[str, str] = {}
        for config in embedding_collection.embedding_configs():
            for f in config.feature_names:
                self.sequence_rows[f] = config.num_embeddings
                self.feature_tables[f] = config.name
        pooled_dim = 0
        if embedding_bag_collection is not None:
            for config in embedding_bag_collection.embedding_bag_configs():
                self.pooled_keys.extend(config.feature_names)
                pooled_dim += config.embedding_dim * len(config.feature_names)
                for f in config.feature_names:
                    self.pooled_rows[f] = config.num_embeddings
                    self.feature_tables[f] = config.name
        in_features = (interaction.candidate_dim + interaction.output_dim + pooled_dim
                       + dense_in_features)
        self.over_arch = ActivationMLP(
            in_features, over_arch_layer_sizes, over_arch_activation, dropout, device
        )
        self.final = nn.Linear(self.over_arch.out_features, 1, device=device)

    def forward(
        self,
        sequence_features: KeyedJaggedTensor,
        pooled_features: Optional[KeyedJaggedTensor] = None,
        dense_features: Optional[Tensor] = None,
    ) -> Tensor:
        return self.forward_with_lookups(sequence_features, pooled_features,
                                         dense_features, False)[0]

    @torch.jit.export
    def forward_grouped(
        self,
        sequence_features: KeyedJaggedTensor,
        pooled_features: Optional[KeyedJaggedTensor] = None,
        dense_features: Optional[Tensor] = None,
    ) -> Tensor:
        """Logits [K] when K_b candidates share history b: candidate features carry K_b ids
        per sample, histories, pooled and dense features one per sample (B rows). Each
        history is looked up and attended to once per behaviour where the attention allows;
        equal to giving every candidate its own row."""
        return self.forward_with_lookups(sequence_features, pooled_features, dense_features,
                                         True)[0]

    @torch.jit.export
    def forward_with_lookups(
        self,
        sequence_features: KeyedJaggedTensor,
        pooled_features: Optional[KeyedJaggedTensor] = None,
        dense_features: Optional[Tensor] = None,
        grouped: bool = False,
    ) -> Tuple[Tensor, Dict[str, JaggedTensor], Dict[str, Tensor]]:
        """Logits (:meth:`forward`, or :meth:`forward_grouped` when ``grouped``) and what
        the collections returned: the EmbeddingCollection's output by feature (one row per
        id) and the EmbeddingBagCollection's by feature ([B, D] per bag), e.g. for a loss
        term on the looked-up rows (mini-batch aware regularisation of sharded tables)."""
        bags: Optional[KeyedTensor] = None
        ebc = self.embedding_bag_collection
        if ebc is not None:
            self.check_pooled(pooled_features)
            bags = ebc(_required_kjt(pooled_features, "pooled_features"))
        return self.forward_from_bags(sequence_features, bags, dense_features, grouped)

    def check_pooled(self, pooled_features: Optional[KeyedJaggedTensor]) -> None:
        """The named input checks of the pooled features (when ``validate_inputs``)."""
        if self.validate_inputs:
            check_kjt(pooled_features, "pooled_features", self.pooled_rows, self.feature_tables)

    @torch.jit.export
    def forward_from_bags(
        self,
        sequence_features: KeyedJaggedTensor,
        bags: Optional[KeyedTensor],
        dense_features: Optional[Tensor] = None,
        grouped: bool = False,
    ) -> Tuple[Tensor, Dict[str, JaggedTensor], Dict[str, Tensor]]:
        """:meth:`forward_with_lookups` given the EmbeddingBagCollection's output ``bags``
        (None without one): for a caller that calls the collection on its batch's own KJT,
        as :class:`DINTrain` does so that TrainPipelineSparseDist can pipeline it."""
        if self.validate_inputs:
            check_kjt(sequence_features, "sequence_features", self.sequence_rows,
                      self.feature_tables)
        embeddings = self.embedding_collection(sequence_features)
        pooled = self._pooled(bags, sequence_features.stride())
        if grouped:
            logits = self._over_arch(self.interaction.candidates_grouped(embeddings),
                                     self.interaction.forward_grouped(embeddings), pooled,
                                     dense_features,
                                     self.interaction.history_of_candidates(embeddings))
        else:
            logits = self._over_arch(self.interaction.candidates(embeddings),
                                     self.interaction(embeddings), pooled, dense_features, None)
        return logits, embeddings, pooled

    def _pooled(self, bags: Optional[KeyedTensor], batch_size: int) -> Dict[str, Tensor]:
        """The bag collection's output by feature ({} without one); ``batch_size``: samples
        (histories) of the sequence features, B."""
        out: Dict[str, Tensor] = {}
        if bags is None:
            if len(self.pooled_keys) > 0:
                raise ValueError("the model has pooled features but got no bags for them")
            return out
        # Index by key: a sharded collection may return its keys in another order.
        by_key: Dict[str, Tensor] = bags.to_dict()
        for key in self.pooled_keys:
            check_pooled_rows(by_key[key].size(0), batch_size, key)
            out[key] = by_key[key]
        return out

    def _over_arch(
        self,
        candidates: Tensor,
        interest: Tensor,
        pooled: Dict[str, Tensor],
        dense_features: Optional[Tensor],
        rows: Optional[Tensor],
    ) -> Tensor:
        """[candidates, interest, pooled, dense] -> logits; ``rows`` maps each output row to
        its sample's pooled and dense row (grouped form), None when they are the same."""
        parts: List[Tensor] = [candidates, interest]
        for key in self.pooled_keys:
            parts.append(pooled[key] if rows is None else pooled[key].index_select(0, rows))
        if self.dense_in_features > 0:
            dense = _required(dense_features, "dense_features")
            # Grouped form: one dense row per history, checked before it is spread.
            samples = candidates.size(0) if rows is None else dense.size(0)
            check_dense(dense, samples, self.dense_in_features, self.validate_inputs)
            parts.append(dense if rows is None else dense.index_select(0, rows))
        return self.final(self.over_arch(torch.cat(parts, dim=1))).squeeze(1)


class DIN(DINModel):
    """Deep Interest Network (Zhou et al., KDD 2018) on jagged TorchRec inputs.

    Args:
        embedding_collection (EmbeddingCollection): candidate and history tables.
        groups (Sequence[AttentionGroup]): candidate -> history feature groups.
        embedding_bag_collection (Optional[EmbeddingBagCollection]): pooled features.
        dense_in_features (int): F.
        attention_hidden_units (Sequence[int]): local activation unit widths.
        attention_activation (str): "sigmoid", "dice", "prelu" or "relu".
        attention_normalization (str): "none" (the paper) or "softmax".
        use_outer_product (bool): outer product of e and v in the attention input.
        over_arch_layer_sizes, over_arch_activation, dropout, validate_inputs, device: see
            :class:`DINModel`.

    Example::

        ec = EmbeddingCollection(tables=[
            EmbeddingConfig(name="item", embedding_dim=16, num_embeddings=100,
                            feature_names=["item", "hist_item"])])
        model = DIN(ec, [AttentionGroup("item", ["item"], ["hist_item"])])
        logits = model(kjt)  # [B]
    """

    def __init__(
        self,
        embedding_collection: EmbeddingCollection,
        groups: Sequence[AttentionGroup],
        embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
        dense_in_features: int = 0,
        attention_hidden_units: Sequence[int] = (80, 40),
        attention_activation: str = "sigmoid",
        attention_normalization: str = "none",
        use_outer_product: bool = False,
        over_arch_layer_sizes: Sequence[int] = (200, 80),
        over_arch_activation: str = "prelu",
        dropout: float = 0.0,
        validate_inputs: bool = True,
        device: Optional[torch.device] = None,
    ) -> None:
        dims, tables = feature_specs([embedding_collection])
        interaction = DINInteraction(
            groups,
            dims,
            attention_hidden_units,
            attention_activation,
            attention_normalization,
            use_outer_product,
            tables,
            validate_inputs,
            device,
        )
        super().__init__(
            embedding_collection,
            interaction,
            embedding_bag_collection,
            dense_in_features,
            over_arch_layer_sizes,
            over_arch_activation,
            dropout,
            validate_inputs,
            device,
        )


class BaseModel(DINModel):
    """The DIN paper's BaseModel: histories sum-pooled instead of attended.

    Args: as :class:`DIN` without the attention options.

    Example::

        model = BaseModel(ec, [AttentionGroup("item", ["item"], ["hist_item"])])
        logits = model(kjt)  # [B]
    """

    def __init__(
        self,
        embedding_collection: EmbeddingCollection,
        groups: Sequence[AttentionGroup],
        embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
        dense_in_features: int = 0,
        over_arch_layer_sizes: Sequence[int] = (200, 80),
        over_arch_activation: str = "prelu",
        dropout: float = 0.0,
        validate_inputs: bool = True,
        device: Optional[torch.device] = None,
    ) -> None:
        dims, tables = feature_specs([embedding_collection])
        interaction = SumPoolingInteraction(groups, dims, tables, validate_inputs)
        super().__init__(
            embedding_collection,
            interaction,
            embedding_bag_collection,
            dense_in_features,
            over_arch_layer_sizes,
            over_arch_activation,
            dropout,
            validate_inputs,
            device,
        )


class DINTrain(nn.Module):
    """Training wrapper in the style of ``torchrec.models.dlrm.DLRMTrain``.

    Args:
        model (DINModel): DIN or BaseModel.
        grouped (bool): batches carry K_b candidates per history
            (:meth:`DINModel.forward_grouped`); labels are then [K].
        penalty (Optional[nn.Module]): a loss term on what the collections looked up for
            the batch, called as ``penalty(batch, embeddings, pooled)`` with the
            EmbeddingCollection's output by feature and the EmbeddingBagCollection's (see
            :meth:`DINModel.forward_with_lookups`); it works on sharded collections too,
            where the tables are no autograd leaves.

    Call args:
        batch: anything with ``sequence_features``, ``pooled_features``,
        ``dense_features`` and ``labels`` ([B] float in {0, 1}), e.g. ``DINBatch``.

    Returns:
        Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]: (loss, (detached loss, logits,
        labels)), the penalty included in both.

    Example::

        train_model = DINTrain(DIN(ec, groups))
        loss, (_, logits, labels) = train_model(batch)
    """

    def __init__(self, model: DINModel, grouped: bool = False,
                 penalty: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.model = model
        self.grouped = grouped
        self.penalty = penalty
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch: DINBatch) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        model = self.model
        bags: Optional[KeyedTensor] = None
        ebc = model.embedding_bag_collection
        if ebc is not None:
            model.check_pooled(batch.pooled_features)
            if batch.pooled_features is None:  # eager only: under fx tracing it is a proxy
                raise ValueError("pooled_features is None but the model needs them")
            # The collection is called on the batch's own KJT, so TrainPipelineSparseDist
            # traces its input to the batch and pipelines its input distribution (through
            # a helper it would see a modified input and run it on the critical path).
            bags = ebc(batch.pooled_features)
        logits, embeddings, pooled = model.forward_from_bags(
            batch.sequence_features, bags, batch.dense_features, self.grouped)
        if self.model.validate_inputs:
            check_labels(batch.labels, logits.size(0))
        loss = self.loss_fn(logits, batch.labels)
        total = loss if self.penalty is None else loss + self.penalty(batch, embeddings, pooled)
        return total, (total.detach(), logits.detach(), batch.labels.detach())


def compile_dense(model: DINModel, dynamic: bool = True) -> None:
    """``torch.compile`` the dense part of ``model`` in place: the interaction (forward and
    grouped forward) and the over arch. TorchRec's collections stay eager (their lookups are
    FBGEMM kernels already, and sharded ones are not compilable modules); the compiled part
    is where Dice's elementwise passes and the gathers around the GEMMs can be fused.
    ``dynamic=True``: batch and history sizes are symbolic, so ragged batches reuse one
    graph instead of recompiling. State-dict keys are unchanged (``nn.Module.compile``), so
    checkpoints move freely between compiled and eager models.

    Args:
        model (DINModel): DIN or BaseModel (or any model with ``interaction`` and
            ``over_arch`` modules).
        dynamic (bool): compile with dynamic shapes.

    Example::

        compile_dense(model)
        loss, _ = DINTrain(model)(batch)  # first call compiles
    """
    model.interaction.compile(dynamic=dynamic)
    grouped = model.interaction.forward_grouped
    # An instance attribute: forward_grouped is not the module's __call__.
    model.interaction.forward_grouped = torch.compile(grouped, dynamic=dynamic)  # type: ignore
    model.over_arch.compile(dynamic=dynamic)
