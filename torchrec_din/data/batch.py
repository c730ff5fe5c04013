"""DINBatch lives in the library (``torchrec_din.batch``); re-exported here for the loaders."""

from torchrec_din.batch import DINBatch  # noqa: F401
