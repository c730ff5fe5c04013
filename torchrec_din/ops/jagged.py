"""Jagged primitives for attention over variable-length behaviour sequences.

A batch of histories is carried as TorchRec does: ``values`` [N, ...] holding the
behaviours of all B samples back to back (oldest..newest within a sample) and
``lengths`` [B]. Nothing here pads: every function costs O(N) (plus O(B)).

Each public function has one call and an ``impl`` switch:

* ``"reference"``: a per-segment loop over ``torch.split``; obviously right, slow, and it
  reads ``lengths`` on the host. It exists to test the fast paths against.
* ``"torch"`` (default): vectorised index/scatter ops, differentiable, no host sync,
  fx-traceable as a leaf, TorchScript- and ``torch.export``-friendly (B and N dynamic).
* ``"fbgemm"``: FBGEMM's jagged kernels where one exists (``segment_softmax``).

Every function is scriptable as a whole (all branches compile), so a scripted model may
call them with any ``impl``.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

IMPLS = ("reference", "torch", "fbgemm")


def _check_impl(impl: str, allowed: List[str]) -> None:
    if impl not in allowed:
        raise ValueError("impl must be one of " + str(allowed) + ", got '" + impl + "'")


def lengths_to_segment_ids(lengths: Tensor, num_values: Optional[int] = None) -> Tensor:
    """Index of the segment (sample) that each of the N values belongs to.

    Args:
        lengths (Tensor): [B] non-negative segment lengths.
        num_values (Optional[int]): N = lengths.sum(). Pass it (e.g. ``values.size(0)``):
            without it ``repeat_interleave`` reads the total on the host (a device sync).

    Returns:
        Tensor: [N] int64, ``segment_ids[j] = b`` for every value j of sample b.

    Example::

        lengths_to_segment_ids(torch.tensor([2, 0, 1]), 3)  # tensor([0, 0, 2])
    """
    batch = torch.arange(lengths.numel(), device=lengths.device)
    return torch.repeat_interleave(batch, lengths, output_size=num_values)


def broadcast_to_segments(
    x: Tensor,
    lengths: Tensor,
    segment_ids: Optional[Tensor] = None,
    impl: str = "torch",
) -> Tensor:
    """Repeat each per-sample row of ``x`` once per value of its segment.

    Args:
        x (Tensor): [B, ...] one row per sample.
        lengths (Tensor): [B] segment lengths.
        segment_ids (Optional[Tensor]): [N] from :func:`lengths_to_segment_ids`; pass it
            to reuse it and to avoid the host sync of computing it without N.
        impl (str): "reference" or "torch".

    Returns:
        Tensor: [N, ...] where row j is ``x[segment_ids[j]]``. Its gradient is a segment sum.

    Example::

        broadcast_to_segments(torch.tensor([[1.0], [2.0]]), torch.tensor([1, 2]))
        # tensor([[1.], [2.], [2.]])
    """
    _check_impl(impl, ["reference", "torch"])
    if impl == "reference":
        counts: List[int] = lengths.tolist()
        parts: List[Tensor] = []
        for b, n in enumerate(counts):
            shape: List[int] = [n] + list(x.shape[1:])
            parts.append(x[b : b + 1].expand(shape))
        return torch.cat(parts, 0) if len(parts) > 0 else x[:0]
    if segment_ids is None:
        segment_ids = lengths_to_segment_ids(lengths)
    return x.index_select(0, segment_ids)


def segment_sum(
    values: Tensor,
    lengths: Tensor,
    segment_ids: Optional[Tensor] = None,
    impl: str = "torch",
) -> Tensor:
    """Sum the values of each segment; an empty segment sums to zero.

    Args:
        values (Tensor): [N, ...].
        lengths (Tensor): [B] segment lengths, summing to N.
        segment_ids (Optional[Tensor]): [N] from :func:`lengths_to_segment_ids`, to reuse.
        impl (str): "reference" or "torch".

    Returns:
        Tensor: [B, ...].

    Example::

        segment_sum(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([2, 0, 1]))
        # tensor([[3.], [0.], [3.]])
    """
    _check_impl(impl, ["reference", "torch"])
    tail: List[int] = list(values.shape[1:])
    if impl == "reference":
        counts: List[int] = lengths.tolist()
        rows: List[Tensor] = [c.sum(0) for c in torch.split(values, counts, dim=0)]
        if len(rows) == 0:
            return values.new_zeros([0] + tail)
        return torch.stack(rows, 0)
    if segment_ids is None:
        segment_ids = lengths_to_segment_ids(lengths, values.size(0))
    out = values.new_zeros([lengths.numel()] + tail)
    return out.index_add(0, segment_ids, values)


def segment_softmax(
    scores: Tensor,
    lengths: Tensor,
    segment_ids: Optional[Tensor] = None,
    impl: str = "torch",
) -> Tensor:
    """Softmax of the scores within each segment.

    Args:
        scores (Tensor): [N] one score per value.
        lengths (Tensor): [B] segment lengths, summing to N.
        segment_ids (Optional[Tensor]): [N] from :func:`lengths_to_segment_ids`, to reuse.
        impl (str): "reference", "torch" or "fbgemm" (``torch.ops.fbgemm.jagged_softmax``).

    Returns:
        Tensor: [N] weights, non-negative and summing to 1 over each non-empty segment.
        Empty segments have no entries, so there is nothing to mask.

    Example::

        segment_softmax(torch.tensor([0.0, 0.0, 5.0]), torch.tensor([2, 1]))
        # tensor([0.5000, 0.5000, 1.0000])
    """
    _check_impl(impl, ["reference", "torch", "fbgemm"])
    if impl == "reference":
        counts: List[int] = lengths.tolist()
        chunks = torch.split(scores, counts, dim=0)
        return torch.cat([torch.softmax(c, 0) for c in chunks], 0) if len(counts) > 0 else scores
    if impl == "fbgemm":
        offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
        # FBGEMM needs a bound on the segment length; N bounds every segment and is known
        # without reading ``lengths`` on the host.
        out, _ = torch.ops.fbgemm.jagged_softmax(scores.view(-1, 1), offsets, scores.size(0))
        return out.view(-1)
    if segment_ids is None:
        segment_ids = lengths_to_segment_ids(lengths, scores.size(0))
    num_segments = lengths.numel()
    # Shift by the per-segment max for stability; the shift cancels, so no gradient is needed.
    seg_max = torch.full(
        [num_segments], float("-inf"), dtype=scores.dtype, device=scores.device
    ).scatter_reduce(0, segment_ids, scores.detach(), reduce="amax", include_self=True)
    exp = torch.exp(scores - seg_max.index_select(0, segment_ids))
    denom = scores.new_zeros([num_segments]).index_add(0, segment_ids, exp)
    return exp / denom.index_select(0, segment_ids)


def _size_from_device(total: Tensor) -> int:
    """A size held in a 0-d tensor, read on the host (a device sync). Under torch.export /
    torch.compile (or fake tensors with a shape environment) it stays symbolic (an unbacked
    size, checked >= 0), so the program keeps working for every request instead of baking in
    the example's value."""
    if torch.jit.is_scripting():
        return int(total.item())
    else:
        n = total.item()
        if torch.compiler.is_compiling() or isinstance(n, torch.SymInt):
            torch._check(n >= 0)
            return n
        return int(n)


def candidate_pairs(
    lengths: Tensor,
    num_candidates: Tensor,
    num_candidates_total: Optional[int] = None,
    num_pairs: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(candidate, behaviour) pairs when K_b candidates share history b.

    Candidates are grouped by history (the K_0 candidates of history 0 first, ...);
    behaviours are the histories' rows back to back. Pair order is candidate-major, each
    candidate's pairs in its history's order: exactly the rows of a batch that gives every
    candidate its own copy of the history.

    Args:
        lengths (Tensor): [B] behaviours per history.
        num_candidates (Tensor): [B] candidates per history.
        num_candidates_total (Optional[int]): K = num_candidates.sum() (e.g. the candidate
            rows' count); otherwise read on the host (a device sync).
        num_pairs (Optional[int]): P = sum over candidates of their history's length, if
            known; otherwise read on the host (a device sync).

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``pair_lengths`` [K] (pairs of each candidate),
        ``pair_candidate`` [P] and ``pair_behaviour`` [P] (row of ``values`` of each pair).

    Example::

        candidate_pairs(torch.tensor([2, 0, 1]), torch.tensor([2, 1, 1]))
        # (tensor([2, 2, 0, 1]), tensor([0, 0, 1, 1, 3]), tensor([0, 1, 0, 1, 2]))
    """
    num_histories = lengths.numel()
    history_of_candidate = torch.repeat_interleave(
        torch.arange(num_histories, device=lengths.device), num_candidates,
        output_size=num_candidates_total)
    pair_lengths = lengths.index_select(0, history_of_candidate)
    if num_pairs is None:
        num_pairs = _size_from_device(pair_lengths.sum())
    num_k = pair_lengths.numel()
    pair_candidate = torch.repeat_interleave(
        torch.arange(num_k, device=lengths.device), pair_lengths, output_size=num_pairs)
    history_start = torch.cumsum(lengths, 0) - lengths
    pair_start = torch.cumsum(pair_lengths, 0) - pair_lengths
    offset_in_history = (torch.arange(num_pairs, device=lengths.device)
                         - pair_start.index_select(0, pair_candidate))
    pair_behaviour = (history_start.index_select(0, history_of_candidate)
                      .index_select(0, pair_candidate) + offset_in_history)
    return pair_lengths, pair_candidate, pair_behaviour
