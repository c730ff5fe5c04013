"""Helpers for tests and benchmarks: the padded DIN formulation to check and measure against."""

from torchrec_din.testing.padded import (  # noqa: F401
    jagged_to_padded,
    padded_target_attention,
)
