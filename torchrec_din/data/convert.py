"""Write a built-in data set (MovieLens-100k, Amazon, synthetic) as Parquet files in the
schema's columns, plus a config that trains on them: the template for your own logs."""

import copy
import os
import shutil
from typing import Any, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from torchrec_din.data.loader import DINDataset
from torchrec_din.data.samples import SampleTable
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.io import atomic_write


def _list_array(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int64)))


def split_table(dataset: DINDataset, rows: np.ndarray) -> pa.Table:
    """The Parquet rows of ``dataset``'s samples ``rows`` (positions in the split)."""
    t, schema = dataset.table, dataset.schema
    samples = dataset.rows[rows]
    flat, lengths = t.history_positions(samples)
    columns: Dict[str, pa.Array] = {}
    for c in schema.candidate_features():
        columns[c] = pa.array(t.candidate_column(c)[samples].astype(np.int64))
    for h in schema.history_features():
        columns[h] = _list_array(t.history_column(h)[flat], lengths)
    users = t.user_row[samples]
    for p in schema.pooled:
        columns[p] = pa.array(t.user_column(p)[users].astype(np.int64))
    columns[schema.label] = pa.array(t.label[samples].astype(np.int8))
    if schema.group_by not in columns:
        columns[schema.group_by] = pa.array(users.astype(np.int64))
    return pa.table(columns)


def convert(table: SampleTable, config: Dict[str, Any], output: str,
            row_group_rows: int = 16384) -> str:
    """Write train / valid / test Parquet files and ``config.yaml`` into ``output``.

    Returns:
        str: the path of the written config (``data.dataset: parquet``, the file globs,
        ``tables.<name>.num_embeddings`` from the data).
    """
    schema = FeatureSchema.from_config(config["features"])
    tmp = output.rstrip("/") + ".part"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    files: Dict[str, List[str]] = {}
    for split in ("train", "valid", "test"):
        ds = DINDataset(table, split, schema)
        name = f"{split}.parquet"
        with pq.ParquetWriter(os.path.join(tmp, name), split_table(ds, np.arange(0)).schema) as w:
            for start in range(0, len(ds), row_group_rows):
                rows = np.arange(start, min(start + row_group_rows, len(ds)))
                w.write_table(split_table(ds, rows), row_group_size=row_group_rows)
        files[split] = [os.path.join(os.path.abspath(output), name)]
    out_cfg = copy.deepcopy(config)
    out_cfg["data"]["dataset"] = "parquet"
    out_cfg["data"]["parquet"].update(files)
    out_cfg["data"]["group_histories"] = False
    tables = out_cfg.setdefault("tables", {})
    for t in schema.table_features():
        tables.setdefault(t, {})["num_embeddings"] = int(table.vocab[t])
    text = "# Written by `python -m torchrec_din convert`: trains on the Parquet files here.\n"
    text += yaml.safe_dump(out_cfg, sort_keys=False)
    atomic_write(os.path.join(tmp, "config.yaml"), lambda f: f.write(text), binary=False)
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)  # the folder appears whole or not at all
    return os.path.join(output, "config.yaml")
