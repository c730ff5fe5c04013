"""Data: DINBatch, datasets and loaders."""

from torchrec_din.data.collate import DINBatch  # noqa: F401
