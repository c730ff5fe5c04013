"""Parquet input, streamed: one row per sample, read row group by row group.

Columns (named by the feature schema): candidate features are integer columns, history
features list<integer> columns (the behaviours, oldest first; the history columns of a group
have equal lengths per row), pooled features integer or list<integer> (multi-hot) columns,
dense features float columns, the label 0/1, and the ``group_by`` column (GAUC groups).

The data set is never held in memory: an epoch reads a bounded window of rows at a time
(``buffer_rows``, a seeded shuffle buffer), so memory stays flat however large the files
are. Split of the work, exactly once per epoch:

* the row groups of all files, in a seeded order per epoch (shuffle) or file order;
* that row sequence cut into ``world`` contiguous parts, one per rank;
* a rank's part cut into windows of ``buffer_rows`` rows; window ``w`` goes to DataLoader
  worker ``w % num_workers``, which shuffles it (seed, epoch, rank, window) and cuts it into
  batches. The DataLoader takes batches from its workers in turn, so the order is fixed
  for a given ``num_workers`` and a run resumed mid-epoch skips exactly the batches it
  already trained on.

Evaluation (no shuffle) keeps file order whatever ``num_workers`` is: a rank's part is cut
into batches and batch ``j`` goes to worker ``j % num_workers``, so the DataLoader's turn
taking hands them out as 0, 1, 2, ... and every prediction meets its own label and group.

Every rank yields the same number of batches (collective training needs it): where a
rank's part is one row shorter and that would drop a batch, its last batch is split in two.

A window reads only its own rows (``iter_batches`` over the row group, continued where the
previous window stopped), so memory follows ``buffer_rows``, not the writer's row-group size.
Histories longer than ``max_history`` keep their newest behaviours, as the built-in data
sets and serving do.
"""

import glob
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch import Generator
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from torchrec_din.data.collate import build_batch, DINBatch
from torchrec_din.data.loader import _identity
from torchrec_din.data.samples import range_positions
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.source import EpochLoader, NotConvertible


_WORKER_PREFIX = "Caught ParquetDataError in DataLoader worker process"


class ParquetDataError(ValueError):
    """Bad Parquet input; the message names the file, row group, row and column.

    Raised inside a DataLoader worker, it reaches the main process as the same one line: the
    DataLoader re-creates it from a text holding the worker's whole traceback, which the
    constructor reduces to the original message (kept in ``worker_traceback``).
    """

    def __init__(self, message: str = "") -> None:
        self.worker_traceback: Optional[str] = None
        if message.startswith(_WORKER_PREFIX):
            self.worker_traceback = message
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = last.split("ParquetDataError: ", 1)[-1]
        super().__init__(message)


@dataclass(frozen=True)
class _Unit:
    """One row group: file, index in the file, rows, first row's position in the file."""

    file: str
    group: int
    rows: int
    first_row: int


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type):
        return "list<int>"
    return str(t)


class ParquetSplit:
    """The files of one split (a glob pattern or a list of patterns), from metadata only.

    Checks every file's columns against the schema before any training starts: present, of
    the right type, at least one row.

    Args:
        patterns (Sequence[str]): glob patterns (sorted matches, in order).
        schema (FeatureSchema): the features.
        name (str): the split, for messages.
    """

    def __init__(self, patterns: Sequence[str], schema: FeatureSchema, name: str) -> None:
        self.schema, self.name = schema, name
        self.files: List[str] = []
        for p in patterns:
            matches = sorted(glob.glob(os.path.expanduser(p)))
            if not matches:
                raise ParquetDataError(f"{name} split: no file matches {p!r}")
            self.files += matches
        want: Dict[str, Tuple[str, ...]] = {}
        for c in schema.candidate_features():
            want[c] = ("int",)
        for h in schema.history_features():
            want[h] = ("list<int>",)
        for p in schema.pooled:
            want[p] = ("int", "list<int>")
        for d in schema.dense:
            want[d] = ("float", "int")
        want[schema.label] = ("int", "float", "bool")
        want.setdefault(schema.group_by, ("int",))
        self.kinds: Dict[str, str] = {}
        self.units: List[_Unit] = []
        for path in self.files:
            try:
                meta = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as e:
                raise ParquetDataError(f"{path}: not a readable Parquet file ({e})") from None
            arrow = meta.schema_arrow
            for column, kinds in want.items():
                if column not in arrow.names:
                    raise ParquetDataError(
                        f"{path}: missing column {column!r} (the schema needs {sorted(want)}; "
                        f"the file has {arrow.names})")
                kind = _kind(arrow.field(column).type)
                if kind not in kinds:
                    raise ParquetDataError(
                        f"{path}: column {column!r} is {arrow.field(column).type}, expected "
                        f"{' or '.join(kinds)}")
                self.kinds[column] = kind
            if meta.metadata.num_rows == 0:
                raise ParquetDataError(f"{path}: the file has no rows")
            first = 0
            for g in range(meta.metadata.num_row_groups):
                rows = meta.metadata.row_group(g).num_rows
                if rows:
                    self.units.append(_Unit(path, g, rows, first))
                first += rows
        self.num_rows = sum(u.rows for u in self.units)
        self.columns = list(want)

    def open(self, unit: _Unit, files: Optional[Dict[str, pq.ParquetFile]] = None
             ) -> pq.ParquetFile:
        """``unit``'s file, checked to still have the row group seen at start-up (a file
        replaced or cut while the run reads it is named, not an index error). ``files``
        keeps files opened before (their footers are read once)."""
        if files is not None and unit.file in files:
            return files[unit.file]
        try:
            # Column chunks are streamed in 64 KiB reads, never buffered whole (pre_buffer
            # would hold a row group's compressed columns: memory would follow its size).
            f = pq.ParquetFile(unit.file, buffer_size=1 << 16, pre_buffer=False)
        except (pa.ArrowException, OSError) as e:
            raise ParquetDataError(f"{unit.file}: cannot be read any more ({e}); was it "
                                   "changed or removed while the run reads it?") from None
        meta = f.metadata
        if unit.group >= meta.num_row_groups or meta.row_group(unit.group).num_rows != unit.rows:
            raise ParquetDataError(
                f"{unit.file}: changed while the run reads it (row group {unit.group} of "
                f"{unit.rows} rows is gone; the file now has {meta.num_row_groups} row groups, "
                f"{meta.num_rows} rows); restore it or restart the run")
        if files is not None:
            files.clear()  # one open file per reader
            files[unit.file] = f
        return f

    def read(self, unit: _Unit, columns: Optional[List[str]] = None) -> pa.Table:
        """A whole row group (metadata passes: counts, one column)."""
        try:
            return self.open(unit).read_row_group(unit.group, columns=columns or self.columns)
        except (pa.ArrowException, OSError) as e:
            raise ParquetDataError(f"{unit.file}: row group {unit.group} cannot be decoded "
                                   f"({e})") from None

    def column(self, name: str) -> np.ndarray:
        """One scalar column of the whole split in file order, read row group by row group."""
        parts = [self.read(u, [name]).column(name).to_numpy() for u in self.units]
        return np.concatenate(parts) if parts else np.zeros(0)


def _flat(column: Union[pa.ChunkedArray, pa.Array]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(values, offsets) of a list column, (values, None) of a scalar one."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        offsets = arr.offsets.to_numpy().astype(np.int64)
        values = arr.values.to_numpy(zero_copy_only=False)
        return values[offsets[0]:offsets[-1]], offsets - offsets[0]
    return arr.to_numpy(zero_copy_only=False), None


class _Window:
    """Rows of a window as numpy columns, with where each row came from (for errors)."""

    def __init__(self, split: ParquetSplit, pieces: List[Tuple[_Unit, int, int]],
                 vocab: Dict[str, int], cache: Dict[str, Any], max_history: int = 0) -> None:
        tables, origin_unit, origin_row = [], [], []
        for unit, start, end in pieces:
            tables.append(_read_rows(split, unit, start, end, cache))
            origin_unit.append(np.full(end - start, len(origin_unit), np.int64))
            origin_row.append(np.arange(start, end, dtype=np.int64))
        self.pieces = pieces
        self.max_history = max_history
        self.unit_of = np.concatenate(origin_unit)
        self.row_of = np.concatenate(origin_row)
        table = pa.concat_tables(tables)
        self.split = split
        self.columns: Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]] = {}
        for name in split.columns:
            column = table.column(name).combine_chunks()  # once, for both uses
            self._check_nulls(name, column)
            self.columns[name] = _flat(column)
        self._check_values(vocab)

    def where(self, i: int, column: str) -> str:
        unit = self.pieces[int(self.unit_of[i])][0]
        row = int(self.row_of[i])
        return (f"{unit.file}: row group {unit.group}, row {row} (row {unit.first_row + row} "
                f"of the file), column {column!r}")

    def _row_of_value(self, column: str, value_index: int) -> int:
        offsets = self.columns[column][1]
        if offsets is None:
            return value_index
        return int(np.searchsorted(offsets, value_index, side="right") - 1)

    def _check_nulls(self, name: str, arr: pa.Array) -> None:
        if arr.null_count:
            i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise ParquetDataError(f"{self.where(i, name)}: null value")
        if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            values = arr.flatten()  # only this slice's elements (``.values`` may hold more)
            if values.null_count:
                v = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                offsets = arr.offsets.to_numpy()
                i = int(np.searchsorted(offsets - offsets[0], v, side="right") - 1)
                raise ParquetDataError(f"{self.where(i, name)}: null inside the list")

    def _check_values(self, vocab: Dict[str, int]) -> None:
        schema = self.split.schema
        table_of = {f: t for t, fs in schema.table_features().items() for f in fs}
        for feature, table in table_of.items():
            values, _ = self.columns[feature]
            if values.size == 0:
                continue
            bad = (values < 0) | (values >= vocab[table])
            if bad.any():
                v = int(np.flatnonzero(bad)[0])
                i = self._row_of_value(feature, v)
                raise ParquetDataError(
                    f"{self.where(i, feature)}: id {int(values[v])} is outside table "
                    f"{table!r} [0, {vocab[table]}) (tables.{table}.num_embeddings)")
        label = self.columns[schema.label][0].astype(np.float64)
        bad = (label != 0) & (label != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ParquetDataError(f"{self.where(i, schema.label)}: label {float(label[i])}, "
                                   "expected 0 or 1")
        for d in schema.dense:
            values = self.columns[d][0].astype(np.float64)
            if not np.isfinite(values).all():
                i = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ParquetDataError(f"{self.where(i, d)}: non-finite value {float(values[i])}")
        for g in schema.groups:
            first = self.columns[g.history[0]][1]
            for h in g.history[1:]:
                lengths = np.diff(self.columns[h][1])
                bad = lengths != np.diff(first)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise ParquetDataError(
                        f"{self.where(i, h)}: {int(lengths[i])} behaviours, but "
                        f"{g.history[0]!r} has {int(np.diff(first)[i])} (group {g.name!r} "
                        "pairs them one to one)")

    def __len__(self) -> int:
        return int(self.row_of.size)

    def batch(self, rows: np.ndarray, schema: FeatureSchema) -> DINBatch:
        """The DINBatch of window rows ``rows`` (no padding: jagged gathers)."""
        ones = np.ones(rows.size, np.int64)
        pooled = []
        for p in schema.pooled:
            v, offsets = self.columns[p]
            pooled.append((v[rows], ones) if offsets is None else _gather(v, offsets, rows))
        return build_batch(
            schema,
            candidates=[self.columns[c][0][rows] for c in schema.candidate_features()],
            num_candidates=ones,
            histories=[_gather(*self.columns[h], rows, self.max_history)
                       for h in schema.history_features()],
            pooled=pooled,
            dense=(np.stack([self.columns[d][0][rows] for d in schema.dense], 1)
                   if schema.dense else np.zeros((rows.size, 0), np.float32)),
            labels=self.columns[schema.label][0][rows])


def _gather(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
            max_history: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Jagged rows ``rows`` of (values, offsets): their values back to back and lengths;
    ``max_history`` > 0 keeps each row's last (newest) ``max_history`` values."""
    starts, ends = offsets[rows], offsets[rows + 1]
    if max_history > 0:
        starts = np.maximum(starts, ends - max_history)
    lengths = ends - starts
    return values[range_positions(starts, lengths)].astype(np.int64), lengths


def _read_rows(split: ParquetSplit, unit: _Unit, start: int, end: int,
               cache: Dict[str, Any]) -> pa.Table:
    """Rows [start, end) of a row group, decoded in record batches of 1,024 rows.
    Consecutive windows usually continue in the same row group, so the open reader and the
    unread rest of its last record batch stay in ``cache``."""
    key = (unit.file, unit.group)
    if cache.get("key") != key or cache["pos"] > start:
        f = split.open(unit, cache.setdefault("files", {}))
        cache.update(key=key, pos=0, rest=None, reader=f.iter_batches(
            batch_size=1024, row_groups=[unit.group],
            columns=split.columns, use_threads=False))
    parts: List[pa.RecordBatch] = []
    try:
        while cache["pos"] < end:
            batch = cache["rest"] if cache["rest"] is not None else next(cache["reader"])
            cache["rest"] = None
            lo, hi = cache["pos"], cache["pos"] + batch.num_rows
            if hi > start:
                parts.append(batch.slice(max(start - lo, 0), min(end, hi) - max(start, lo)))
            if hi > end:  # keep the rows after ``end`` for the next window
                cache["rest"], hi = batch.slice(end - lo), end
            cache["pos"] = hi
    except StopIteration:
        raise ParquetDataError(f"{unit.file}: row group {unit.group} ended at row "
                               f"{cache['pos']}, expected {unit.rows} rows") from None
    except (pa.ArrowException, OSError) as e:
        near = cache.get("pos", start)
        cache.clear()  # the next window opens the file again
        raise ParquetDataError(f"{unit.file}: row group {unit.group} cannot be decoded near "
                               f"row {near} ({e})") from None
    return pa.Table.from_batches(parts)  # pieces are never empty (see _windows)


class ParquetDataset(IterableDataset):
    """Streams DINBatch from a ParquetSplit; ``set_epoch`` picks the epoch (and a position
    to resume from). See the module docstring for how the work is split.

    Args:
        split (ParquetSplit): the files.
        vocab (Dict[str, int]): rows of every table (ids are checked against them).
        batch_size (int): samples per batch.
        shuffle (bool): shuffle row groups and rows within each window.
        seed (int): base seed.
        buffer_rows (int): rows per shuffle window (memory bound), rounded up to a multiple
            of ``batch_size``.
        rank (int): this rank.
        world_size (int): ranks.
        max_history (int): keep each history's newest ``max_history`` behaviours (0: all).

    Example::

        split = ParquetSplit(["data/train-*.parquet"], schema, "train")
        ds = ParquetDataset(split, vocab, 1024, shuffle=True)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
    """

    def __init__(self, split: ParquetSplit, vocab: Dict[str, int], batch_size: int,
                 shuffle: bool, seed: int = 0, buffer_rows: int = 65536, rank: int = 0,
                 world_size: int = 1, max_history: int = 0) -> None:
        super().__init__()
        if batch_size < 2 and world_size > 1:
            raise ValueError("Parquet input on several ranks needs batch_size >= 2")
        self.split, self.schema, self.vocab = split, split.schema, vocab
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.max_history = max_history
        # Unshuffled (evaluation): one batch per window, so that windows dealt to workers in
        # turn come back in file order (see the module docstring).
        self.window = (max(1, math.ceil(buffer_rows / batch_size)) * batch_size if shuffle
                       else batch_size)
        self.rank, self.world = rank, world_size
        self.epoch, self.skip = 0, 0
        total = split.num_rows
        if total < world_size:
            raise ParquetDataError(f"{split.name} split: {total} rows for {world_size} ranks")
        self.part = (total * rank // world_size, total * (rank + 1) // world_size)
        self.num_batches = math.ceil(math.ceil(total / world_size) / batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        return self.num_batches - self.skip

    def _windows(self) -> List[List[Tuple[_Unit, int, int]]]:
        """This rank's rows as windows of (row group, start, end) pieces."""
        units = self.split.units
        order = (np.random.default_rng(self.seed + self.epoch).permutation(len(units))
                 if self.shuffle else np.arange(len(units)))
        lo, hi = self.part
        windows: List[List[Tuple[_Unit, int, int]]] = []
        current: List[Tuple[_Unit, int, int]] = []
        filled, pos = 0, 0
        for k in order:
            unit = units[int(k)]
            start, end = max(lo - pos, 0), min(hi - pos, unit.rows)
            pos += unit.rows
            while start < end:
                take = min(end - start, self.window - filled)
                current.append((unit, start, start + take))
                start += take
                filled += take
                if filled == self.window:
                    windows.append(current)
                    current, filled = [], 0
            if pos >= hi:
                break
        if current:
            windows.append(current)
        return windows

    def _batch_sizes(self, windows: List[List[Tuple[_Unit, int, int]]]) -> List[List[int]]:
        sizes = []
        for w in windows:
            n = sum(e - s for _, s, e in w)
            sizes.append([self.batch_size] * (n // self.batch_size)
                         + ([n % self.batch_size] if n % self.batch_size else []))
        missing = self.num_batches - sum(len(s) for s in sizes)
        if missing == 1:  # one row short of another batch: split the last batch in two
            last = sizes[-1].pop()
            sizes[-1] += [last - 1, 1]
        return sizes

    def __iter__(self) -> Iterator[DINBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        windows = self._windows()
        sizes = self._batch_sizes(windows)
        if not self.shuffle:
            yield from self._ordered(windows, sizes, worker, workers)
            return
        # The DataLoader takes one batch from each worker in turn (skipping finished ones).
        # Replay that for the `skip` batches already trained: how many of each worker's
        # batches they were, and which worker was next. A resumed DataLoader starts again
        # at worker 0, so worker ids rotate to make that worker first.
        per_worker = [sum(len(sizes[w]) for w in range(i, len(windows), workers))
                      for i in range(workers)]
        consumed, seen, t, last = [0] * workers, 0, 0, workers - 1
        while seen < self.skip:
            for i in range(workers):
                if t < per_worker[i] and seen < self.skip:
                    consumed[i] += 1
                    seen += 1
                    last = i
            t += 1
        worker = (worker + last + 1) % workers
        skip = consumed[worker]
        cache: Dict[str, Any] = {}
        for w in range(worker, len(windows), workers):
            if skip >= len(sizes[w]):
                skip -= len(sizes[w])
                continue
            window = _Window(self.split, windows[w], self.vocab, cache, self.max_history)
            rows = np.arange(len(window))
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch, self.rank, w])
                rows = rng.permutation(rows)
            bounds = np.cumsum([0] + sizes[w])
            for j in range(skip, len(sizes[w])):
                yield window.batch(rows[bounds[j]:bounds[j + 1]], self.schema)
            skip = 0

    def _ordered(self, windows: List[List[Tuple[_Unit, int, int]]], sizes: List[List[int]],
                 worker: int, workers: int) -> Iterator[DINBatch]:
        """File order for evaluation: this worker's batches are those whose index in the
        rank's part is ``worker`` modulo ``workers``; the DataLoader takes one from each
        worker in turn, so they arrive as 0, 1, 2, ..."""
        cache: Dict[str, Any] = {}
        first = 0
        for w, window_sizes in enumerate(sizes):
            mine = [j for j in range(len(window_sizes)) if (first + j) % workers == worker]
            first += len(window_sizes)
            if not mine:
                continue
            window = _Window(self.split, windows[w], self.vocab, cache, self.max_history)
            bounds = np.cumsum([0] + window_sizes)
            for j in mine:
                yield window.batch(np.arange(bounds[j], bounds[j + 1]), self.schema)

    def labels(self) -> np.ndarray:
        """The whole split's labels in file order (what evaluation scores, unshuffled)."""
        return self.split.column(self.schema.label).astype(np.float32)

    def user_ids(self) -> np.ndarray:
        """The whole split's GAUC groups (``features.group_by``) in file order."""
        return self.split.column(self.schema.group_by)

    def true_probabilities(self) -> Optional[np.ndarray]:
        """Logs carry no known truth: None."""
        return None

    # The rest of the SplitData face (torchrec_din.data.source).

    def loader(self, seed: int, workers: int) -> EpochLoader:
        """This rank's batches with ``workers`` workers (the dataset batches and splits
        itself). Not persistent: each epoch's workers get the dataset as ``set_epoch`` left
        it. Its own generator: otherwise starting workers draws from the global RNG, and a
        resumed run's dropout masks would differ from an uninterrupted run's."""
        dl = DataLoader(self, batch_size=None, num_workers=workers, collate_fn=_identity,
                        generator=Generator().manual_seed(seed))
        return EpochLoader(dl, self)

    def eval_batches(self) -> Iterator[Tuple[DINBatch, bool]]:
        """This rank's part, in file order; every rank has the same number of batches."""
        for batch in self.loader(0, 0):
            yield batch, True

    def candidate_ids(self, feature: str) -> np.ndarray:
        return self.split.column(feature)

    def arrow(self, start: int, stop: int) -> Any:
        raise NotConvertible(f"convert writes a built-in data set; this config already "
                             f"reads Parquet ({self.split.name}: {self.split.files[:2]})")


class ParquetSource:
    """The Parquet data of a config: ``data.parquet.{train,valid,test}`` file globs, table
    sizes from ``tables.<name>.num_embeddings``. Only metadata is read up front.

    Args:
        data_cfg (Dict[str, Any]): the ``data`` section.
        schema (FeatureSchema): the features.
        vocab (Dict[str, int]): rows of every table.
    """

    shared_histories = False  # one sample per row

    def __init__(self, data_cfg: Dict[str, Any], schema: FeatureSchema,
                 vocab: Dict[str, int]) -> None:
        cfg = data_cfg["parquet"]
        self.schema, self.vocab, self.buffer_rows = schema, vocab, int(cfg["buffer_rows"])
        self.max_history = int(data_cfg.get("max_history") or 0)
        self.file_splits: Dict[str, ParquetSplit] = {}  # split name -> its files
        # By file identity (device, inode), not path: a hard link or a bind mount of the
        # train file is the same rows under another name.
        owner: Dict[Tuple[int, int], str] = {}
        for name in ("train", "valid", "test"):
            patterns = cfg[name]
            if isinstance(patterns, str):
                patterns = [patterns]
            if not patterns:
                raise ValueError(f"data.parquet.{name} must name the {name} files (a glob)")
            split = ParquetSplit(patterns, schema, name)
            for path in split.files:
                stat = os.stat(path)
                real = (stat.st_dev, stat.st_ino)
                if real in owner:
                    if owner[real] == name:
                        raise ParquetDataError(f"{path} is matched twice by "
                                               f"data.parquet.{name}; its rows would count twice")
                    raise ParquetDataError(
                        f"{path} is in both the {owner[real]} and the {name} split "
                        f"(data.parquet.{owner[real]} and data.parquet.{name} match it, or "
                        "a hard link of it); "
                        "a file may belong to one split only, or test metrics would be "
                        "measured on training rows")
                owner[real] = name
            self.file_splits[name] = split
        parts = self.file_splits.values()
        self.meta: Dict[str, Any] = {"dataset": "parquet", "protocol": "files",
                                     "files": {k: v.files for k, v in self.file_splits.items()},
                                     "multi_hot": [p for p in schema.pooled if any(
                                         v.kinds[p] == "list<int>" for v in parts)]}

    def summary(self) -> Dict[str, Dict[str, Any]]:
        """Rows per split, and the mean history length of the first row group of train."""
        out = {k: {"samples": v.num_rows} for k, v in self.file_splits.items()}
        train = self.file_splits["train"]
        first = train.read(train.units[0], [self.schema.history_features()[0]])
        _, offsets = _flat(first.column(0))
        lengths = np.diff(offsets)
        if self.max_history > 0:
            lengths = np.minimum(lengths, self.max_history)
        out["train"]["mean_history"] = float(lengths.mean()) if lengths.size else 0.0
        return out

    def splits(self, batch_sizes: Dict[str, int], seed: int, rank: int,
               world: int) -> Dict[str, "ParquetDataset"]:
        return {name: ParquetDataset(split, self.vocab, batch_sizes[name], name == "train",
                                     seed, self.buffer_rows, rank, world, self.max_history)
                for name, split in self.file_splits.items()}

    def count_ids(self, split: str, features: List[str], rows: Dict[str, int],
                  where_label: bool = False) -> Dict[str, np.ndarray]:
        """Occurrences of every id per feature over a split (streamed); ``where_label``
        counts only positive samples."""
        counts = {f: np.zeros(rows[f], np.float64) for f in features}
        s = self.file_splits[split]
        history = set(self.schema.history_features())
        cache: Dict[str, Any] = {}
        for unit in s.units:
            # Read as training reads it, with every row check (nulls, ids in their tables,
            # labels, lengths) and its named error: counting runs before the first batch,
            # so it is where a bad value is met first.
            window = _Window(s, [(unit, 0, unit.rows)], self.vocab, cache)
            positive = window.columns[self.schema.label][0] > 0
            for f in features:
                values, offsets = window.columns[f]
                if f in history and self.max_history > 0:  # what training batches carry
                    values, lengths = _gather(values, offsets, np.arange(offsets.size - 1),
                                              self.max_history)
                    offsets = np.concatenate([[0], np.cumsum(lengths)])
                if where_label:
                    values = values[positive] if offsets is None else values[
                        np.repeat(positive, np.diff(offsets))]
                counts[f] += np.bincount(values, minlength=rows[f])[:rows[f]]
        return counts
