"""Data: the DataSource interface (``source``), the data sets by name (``registry``), the
built-in sets, streaming Parquet, datasets and loaders of DINBatch."""

from torchrec_din.data.collate import DINBatch  # noqa: F401
