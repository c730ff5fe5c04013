"""DIN's target attention computed on jagged behaviour sequences (no padding, no masks)."""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn, Tensor
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din.checks import check_attention_shapes, check_lengths, check_num_candidates
from torchrec_din.modules.activation import make_activation
from torchrec_din.modules.mlp import ActivationMLP
from torchrec_din.ops import (
    candidate_pairs,
    lengths_to_segment_ids,
    segment_softmax,
    segment_sum,
)

NORMALIZATIONS = ("none", "softmax")
# Outer product: up to this D it runs as D*D extra GEMM columns, above it as FBGEMM's
# jagged_dense_bmm. Measured on 2 CPU cores (forward + backward, N = 15k, H = 80): D = 16
# GEMM 41 ms vs bmm 79 ms; D = 32 GEMM 227 ms vs bmm 147 ms.
OUTER_GEMM_MAX_DIM = 24

# Leaves in fx graphs: their bodies branch on shapes or data, which fx cannot trace. After
# ``torchrec.fx.symbolic_trace`` they are compiled by ``torch.jit.script`` as functions.
torch.fx.wrap("segment_softmax")
torch.fx.wrap("segment_sum")
torch.fx.wrap("lengths_to_segment_ids")
torch.fx.wrap("candidate_pairs")
torch.fx.wrap("check_attention_shapes")
torch.fx.wrap("check_lengths")
torch.fx.wrap("check_num_candidates")


class LocalActivationUnit(nn.Module):
    r"""DIN's local activation unit: an MLP scoring each behaviour against its candidate.

    The MLP input for behaviour :math:`e_j` of sample b with candidate :math:`v_b` is
    :math:`[e_j, v_b, e_j - v_b, e_j \odot v_b]` (and optionally the outer product
    :math:`e_j v_b^T`, the paper's Figure 3). The first layer is linear, so it splits into

    .. math::
        (W_e + W_d) e_j + (W_v - W_d) v_b + W_p (e_j \odot v_b) + \sum_{ik} U_{\cdot ik} e_{ji} v_{bk}

    The :math:`v_b` term is computed on B rows and gathered; the behaviour terms enter one
    matrix product over [N, 2D] (e and e*v), never the [N, 4D] concatenation. The outer
    product term is, for D <= 24, D*D more columns of that product, and above as a bilinear
    form: :math:`M_b = U v_b` on B rows ([B, D, H]), each segment's behaviours times it with
    FBGEMM's ``jagged_dense_bmm`` (under ``torch.export``, always the columns). Parameters keep the layout of a plain ``nn.Linear(4D, H)`` (plus
    ``outer_weight`` [H, D, D] = the flattened outer-product columns), so weights move
    freely between this and a padded implementation.

    Args:
        embedding_dim (int): D.
        hidden_units (Sequence[int]): widths of the MLP's hidden layers, e.g. (80, 40).
        activation (str): "sigmoid" (the paper), "dice", "prelu" or "relu". Dice statistics
            are taken over the N real behaviours.
        use_outer_product (bool): add the outer product of e and v to the MLP input.
        device (Optional[torch.device]): where the parameters live.

    Shapes:
        query: [B, D]; values: [N, D]; segment_ids: [N] (sample of each behaviour);
        lengths: [B]; output: [N] one score per behaviour.

    Example::

        lau = LocalActivationUnit(16, (80, 40))
        lengths = torch.tensor([2, 0, 3])
        seg = lengths_to_segment_ids(lengths, 5)
        scores = lau(torch.randn(3, 16), torch.randn(5, 16), seg, lengths)  # [5]
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_units: Sequence[int] = (80, 40),
        activation: str = "sigmoid",
        use_outer_product: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        if len(hidden_units) == 0:
            raise ValueError("hidden_units needs at least one layer")
        self.embedding_dim = embedding_dim
        self.use_outer_product = use_outer_product
        self.outer_as_gemm = embedding_dim <= OUTER_GEMM_MAX_DIM
        first = hidden_units[0]
        self.input_layer = nn.Linear(4 * embedding_dim, first, device=device)
        self.outer_weight: Optional[nn.Parameter] = None
        if use_outer_product:
            self.outer_weight = nn.Parameter(
                torch.empty(first, embedding_dim, embedding_dim, device=device))
        self.reset_parameters()  # here, so the random stream is drawn in the same order
        self.input_activation = make_activation(activation, first, device)
        self.hidden = ActivationMLP(first, hidden_units[1:], activation, device=device)
        self.output_layer = nn.Linear(self.hidden.out_features, 1, device=device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise the module's own parameter, ``outer_weight``: uniform in +-1/sqrt(fan
        in) of the whole first layer (4D + D*D inputs), the bound ``nn.Linear`` would use.
        The layers inside initialise themselves. ``DistributedModelParallel`` calls this
        when it materialises a model built on the meta device (TorchRec's convention)."""
        if self.outer_weight is None or self.outer_weight.is_meta:
            return
        d = self.embedding_dim
        bound = 1.0 / (d * (4 + d)) ** 0.5
        self.outer_weight.uniform_(-bound, bound)

    def first_layer(
        self,
        query: Tensor,
        values: Tensor,
        segment_ids: Tensor,
        lengths: Tensor,
        behaviour_index: Optional[Tensor] = None,
        pair_values: Optional[Tensor] = None,
    ) -> Tensor:
        """Pre-activation of the first layer on the (candidate, behaviour) pairs: [P, H1].

        Without ``behaviour_index`` the pairs are the N behaviours themselves, behaviour j
        paired with candidate ``segment_ids[j]`` (one candidate per history). With it, pair p
        is (candidate ``segment_ids[p]``, behaviour ``behaviour_index[p]``), pairs grouped by
        candidate with ``lengths`` per candidate: several candidates share one history, and
        the candidate-independent part runs once per behaviour, not once per pair;
        ``pair_values`` ([P, D] = ``values[behaviour_index]``) may be passed by a caller that
        needs the gathered rows too, so they are gathered once.
        """
        w_e, w_v, w_d, w_p = self.input_layer.weight.split(self.embedding_dim, dim=1)
        # Candidate-only part on the candidate rows, then gathered to the pairs.
        candidate = torch.addmm(self.input_layer.bias, query, (w_v - w_d).t())
        hidden = candidate.index_select(0, segment_ids)
        query_n = query.index_select(0, segment_ids)
        if behaviour_index is None:
            pair_values = values
            # One GEMM over [e, e*v] ([N, 2D]) was measured faster on CPU than two GEMMs
            # over [N, D] each (fewer passes over the [N, H] output); see
            # benchmarks/attention.py.
            parts: List[Tensor] = [values, values * query_n]
            weights: List[Tensor] = [w_e + w_d, w_p]
        else:
            # Shared histories: the behaviour part once per behaviour, gathered to the pairs.
            behaviour = torch.mm(values, (w_e + w_d).t()).index_select(0, behaviour_index)
            hidden = hidden + behaviour
            if pair_values is None:
                pair_values = values.index_select(0, behaviour_index)
            parts = [pair_values * query_n]
            weights = [w_p]
        outer_weight = self.outer_weight
        d = self.embedding_dim
        gemm_outer = outer_weight is not None and (
            self.outer_as_gemm or torch.compiler.is_compiling())
        if outer_weight is not None and gemm_outer:
            # vec(e_j v_b^T) [P, D*D] joins the GEMM: D times the FLOPs of the bilinear form
            # below, but faster for small D on CPU, and plain index/GEMM ops, so it exports
            # with N dynamic (FBGEMM's kernel takes its length bound as a fixed int).
            parts.append((pair_values.unsqueeze(2) * query_n.unsqueeze(1)).reshape(-1, d * d))
            weights.append(outer_weight.reshape(outer_weight.size(0), d * d))
        hidden = torch.addmm(hidden, torch.cat(parts, dim=1), torch.cat(weights, dim=1).t())
        if outer_weight is not None and not gemm_outer:
            # Bilinear form: M_k = U v_k on the candidate rows ([K, D, H]), then each
            # candidate's pairs e_j M_k with FBGEMM's jagged_dense_bmm; no [P, D, D] tensor.
            # P bounds every segment's length without reading ``lengths`` on the host.
            m = torch.einsum("hik,bk->bih", outer_weight, query)
            offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
            hidden = hidden + torch.ops.fbgemm.jagged_dense_bmm(
                pair_values, offsets, m, pair_values.size(0))[0]
        return hidden

    def forward(
        self,
        query: Tensor,
        values: Tensor,
        segment_ids: Tensor,
        lengths: Tensor,
        behaviour_index: Optional[Tensor] = None,
        pair_values: Optional[Tensor] = None,
    ) -> Tensor:
        hidden = self.input_activation(self.first_layer(
            query, values, segment_ids, lengths, behaviour_index, pair_values))
        return self.output_layer(self.hidden(hidden)).squeeze(1)


class JaggedTargetAttention(nn.Module):
    r"""DIN target attention over jagged histories: :math:`\sum_j a(e_j, v) e_j` per sample.

    Scores come from a :class:`LocalActivationUnit`; with ``normalization="none"`` they are
    used raw (the paper, which does not normalise so that the interest's intensity is kept),
    with ``"softmax"`` they are softmax-normalised within each history (the original code).
    Cost is O(N): nothing is padded and an empty history yields a zero vector.

    Args:
        embedding_dim (int): D of the query and of each behaviour.
        hidden_units (Sequence[int]): hidden widths of the attention MLP.
        activation (str): "sigmoid", "dice", "prelu" or "relu".
        normalization (str): "none" or "softmax".
        use_outer_product (bool): add the outer product of e and v to the MLP input.
        validate_inputs (bool): check lengths against values on every call (reads two
            scalars on the host: a device sync). Shapes are always checked (free). Turn it
            off once the pipeline is trusted: then a forward and backward do no host sync.

    Shapes:
        query: [B, D]; keys: JaggedTensor with values [N, D] and lengths [B] (N = total
        behaviours); output: [B, D]. ``forward_grouped``: query [K, D] with K_b candidates
        per history (num_candidates [B]); output [K, D]. Each behaviour's
        candidate-independent part is computed once, whatever K_b.

    Example::

        attn = JaggedTargetAttention(embedding_dim=16)
        keys = JaggedTensor(values=torch.randn(5, 16), lengths=torch.tensor([2, 0, 3]))
        interest = attn(torch.randn(3, 16), keys)  # [3, 16]
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_units: Sequence[int] = (80, 40),
        activation: str = "sigmoid",
        normalization: str = "none",
        use_outer_product: bool = False,
        validate_inputs: bool = True,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}"
            )
        self.embedding_dim = embedding_dim
        self.normalization = normalization
        self.validate_inputs = validate_inputs
        self.unit = LocalActivationUnit(
            embedding_dim, hidden_units, activation, use_outer_product, device
        )

    def attend(self, query: Tensor, values: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """Pooled interest [B, D] and per-behaviour weights [N] from raw jagged parts."""
        check_attention_shapes(query, values, lengths, self.embedding_dim)
        if self.validate_inputs:
            check_lengths(values, lengths, "keys")
        seg = lengths_to_segment_ids(lengths, values.size(0))
        scores = self.unit(query, values, seg, lengths)
        if self.normalization == "softmax":
            weights = segment_softmax(scores, lengths, seg)
        else:
            weights = scores
        pooled = segment_sum(values * weights.unsqueeze(1), lengths, seg)
        return pooled, weights

    @torch.jit.export
    def attend_grouped(
        self,
        query: Tensor,
        values: Tensor,
        lengths: Tensor,
        num_candidates: Tensor,
        num_pairs: Optional[int] = None,
    ) -> Tuple[Tensor, Tensor]:
        """K candidates against B shared histories: interest [K, D] and pair weights [P].

        Candidate k (rows grouped by history: ``num_candidates[b]`` rows for history b)
        attends over its history exactly as if it had its own copy, but each behaviour's
        candidate-independent first-layer part is computed once for all its candidates.

        Args:
            query: [K, D] candidate embeddings, grouped by history.
            values: [N, D] behaviours; lengths: [B] per history.
            num_candidates: [B] candidates per history (0 allowed).
            num_pairs: P = sum of each candidate's history length, if known (saves a sync).
        """
        check_attention_shapes(query, values, lengths, self.embedding_dim, grouped=True)
        check_num_candidates(num_candidates, lengths)
        if self.validate_inputs:
            check_lengths(values, lengths, "keys")
            check_lengths(query, num_candidates, "candidates")
        pair_lengths, pair_candidate, pair_behaviour = candidate_pairs(
            lengths, num_candidates, query.size(0), num_pairs)
        pair_values = values.index_select(0, pair_behaviour)  # [P, D], gathered once
        scores = self.unit(query, values, pair_candidate, pair_lengths, pair_behaviour,
                           pair_values)
        if self.normalization == "softmax":
            weights = segment_softmax(scores, pair_lengths, pair_candidate)
        else:
            weights = scores
        pooled = segment_sum(pair_values * weights.unsqueeze(1), pair_lengths, pair_candidate)
        return pooled, weights

    def forward(self, query: Tensor, keys: JaggedTensor) -> Tensor:
        return self.attend(query, keys.values(), keys.lengths())[0]

    @torch.jit.export
    def forward_grouped(
        self, query: Tensor, keys: JaggedTensor, num_candidates: Tensor
    ) -> Tensor:
        """Interest vectors [K, D] for K candidates over B shared histories
        (``num_candidates`` [B]: K_b candidates per history, query rows grouped by history)."""
        return self.attend_grouped(query, keys.values(), keys.lengths(), num_candidates, None)[0]

    @torch.jit.export
    def forward_with_weights(
        self, query: Tensor, keys: JaggedTensor
    ) -> Tuple[Tensor, JaggedTensor]:
        """Like ``forward``, also returning each behaviour's weight as a JaggedTensor [N]."""
        lengths = keys.lengths()
        pooled, weights = self.attend(query, keys.values(), lengths)
        return pooled, JaggedTensor(values=weights, lengths=lengths)
