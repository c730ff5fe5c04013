"""Data: DINBatch, datasets and loaders."""

from torchrec_din.data.batch import DINBatch  # noqa: F401
