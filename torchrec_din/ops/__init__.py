"""Jagged primitives: broadcast per-sample rows to behaviours, segment sum, segment softmax."""

from torchrec_din.ops.jagged import (  # noqa: F401
    broadcast_to_segments,
    candidate_pairs,
    IMPLS,
    lengths_to_segment_ids,
    segment_softmax,
    segment_sum,
)
