"""Serving: multi-candidate scoring, TorchScript export, JSON Lines requests."""

from torchrec_din.serve.export import export_scorer, load_trained  # noqa: F401
from torchrec_din.serve.scorer import DINScorer  # noqa: F401
