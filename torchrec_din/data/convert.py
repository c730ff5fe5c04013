"""Write a built-in data set (MovieLens-100k, Amazon, synthetic) as Parquet files in the
schema's columns, plus a config that trains on them: the template for your own logs."""

import copy
import os
import shutil
import tempfile
from typing import Any, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from torchrec_din.data.loader import DINDataset
from torchrec_din.data.source import DataSource
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


HEADER = "# Written by `python -m torchrec_din convert`: trains on the Parquet files here.\n"
OUTPUT_FILES = ("train.parquet", "valid.parquet", "test.parquet", "config.yaml")


def check_output(output: str, overwrite: bool) -> None:
    """Refuse an ``output`` that would lose someone's files: a file, a non-empty folder
    (unless ``overwrite``), and, even with ``overwrite``, a folder holding anything convert
    did not write or one that holds the working directory."""
    if not os.path.lexists(output):
        return
    if not os.path.isdir(output):
        raise ValueError(f"--output {output} is a file; convert writes a folder")
    entries = sorted(os.listdir(output))
    if not entries:
        return
    if not overwrite:
        raise ValueError(f"--output {output} is not empty ({len(entries)} entries, e.g. "
                         f"{entries[:3]}); choose a new folder, or pass --overwrite to replace "
                         "an earlier convert output")
    foreign = [e for e in entries if e not in OUTPUT_FILES]
    config = os.path.join(output, "config.yaml")
    ours = os.path.isfile(config) and open(config, encoding="utf-8",
                                           errors="replace").readline() == HEADER
    if foreign or not ours:
        raise ValueError(f"--output {output} was not written by convert (it holds "
                         f"{foreign[:3] or entries[:3]}); --overwrite replaces only "
                         "convert's own output, so choose another folder")
    here, target = os.path.realpath(os.getcwd()), os.path.realpath(output)
    if here == target or here.startswith(target + os.sep):
        raise ValueError(f"--output {output} holds the working directory; choose another "
                         "folder")


def convert(source: DataSource, config: Dict[str, Any], output: str,
            row_group_rows: int = 16384, overwrite: bool = False) -> str:
    """Write train / valid / test Parquet files and ``config.yaml`` into ``output``.

    The files are written into a new temp folder next to ``output`` and swapped in whole.
    An existing non-empty ``output`` is refused, unless ``overwrite`` and it is an earlier
    convert output: then it is moved aside and removed only once the new one is in place.

    Returns:
        str: the path of the written config (``data.dataset: parquet``, the file globs,
        ``tables.<name>.num_embeddings`` from the data).
    """
    check_output(output, overwrite)
    output = output.rstrip("/") or "/"
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", suffix=".part", dir=parent)
    try:
        path = _write_all(source, config, output, tmp, row_group_rows)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = None
    if os.path.isdir(output) and os.listdir(output):
        aside = tmp + ".old"
        os.replace(output, aside)
    os.replace(tmp, output)  # the folder appears whole or not at all
    if aside is not None:
        shutil.rmtree(aside)
    return path


def _write_all(source: DataSource, config: Dict[str, Any], output: str, tmp: str,
               row_group_rows: int) -> str:
    schema = source.schema
    files: Dict[str, List[str]] = {}
    # One sample per row, in the split's order (every split as one rank sees it whole).
    splits = source.splits({"train": 1, "valid": 1, "test": 1}, 0, 0, 1)
    for name_, split in splits.items():
        size = len(split.labels())
        name = f"{name_}.parquet"
        with pq.ParquetWriter(os.path.join(tmp, name), split.arrow(0, 0).schema) as w:
            for start in range(0, size, row_group_rows):
                w.write_table(split.arrow(start, min(start + row_group_rows, size)),
                              row_group_size=row_group_rows)
        files[name_] = [os.path.join(os.path.abspath(output), name)]
    out_cfg = copy.deepcopy(config)
    out_cfg["data"]["dataset"] = "parquet"
    out_cfg["data"]["parquet"].update(files)
    out_cfg["data"]["group_histories"] = False
    tables = out_cfg.setdefault("tables", {})
    for t in schema.table_features():
        tables.setdefault(t, {})["num_embeddings"] = int(source.vocab[t])
    text = HEADER + yaml.safe_dump(out_cfg, sort_keys=False)
    atomic_write(os.path.join(tmp, "config.yaml"), lambda f: f.write(text), binary=False)
    return os.path.join(output, "config.yaml")
