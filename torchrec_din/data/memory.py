"""The built-in data sets as a :class:`~torchrec_din.data.source.DataSource`: a SampleTable
held in memory, batched by ``DINDataset`` and an epoch sampler."""

from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from torchrec_din.batch import DINBatch
from torchrec_din.data.loader import DINDataset, make_loader
from torchrec_din.data.samples import SampleTable
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.source import EpochLoader


class MemorySplit:
    """One split of a :class:`MemorySource` for one rank (a :class:`SplitData`).

    Args:
        dataset (DINDataset): the whole split (grouped by history for shared-history training).
        batch_size (int): samples (or histories) per batch.
        shuffle (bool): a new order every epoch (training).
        rank, world (int): this rank's part of the split.
    """

    def __init__(self, dataset: DINDataset, batch_size: int, shuffle: bool, rank: int = 0,
                 world: int = 1) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.rank, self.world = rank, world
        self._rows: Optional[DINDataset] = None  # one sample per item, for arrow()

    def __len__(self) -> int:
        return len(self.dataset)

    def loader(self, seed: int, workers: int) -> EpochLoader:
        dl = make_loader(self.dataset, self.batch_size, self.shuffle, seed, workers, self.rank,
                         self.world)
        return EpochLoader(dl, dl.sampler)

    def eval_batches(self) -> Iterator[Tuple[DINBatch, bool]]:
        parts = np.array_split(np.arange(len(self.dataset)), self.world)
        size = self.batch_size
        num_batches = max((p.size + size - 1) // size for p in parts)
        mine = parts[self.rank]
        for i in range(num_batches):
            chunk = mine[i * size:(i + 1) * size]
            # A rank out of samples runs a stand-in batch whose scores are dropped.
            yield self.dataset[chunk if chunk.size else parts[0][:1]], bool(chunk.size)

    def labels(self) -> np.ndarray:
        return self.dataset.labels()

    def user_ids(self) -> np.ndarray:
        return self.dataset.user_ids()

    def true_probabilities(self) -> Optional[np.ndarray]:
        return self.dataset.true_probabilities()

    def candidate_ids(self, feature: str) -> np.ndarray:
        return self.dataset.table.candidate_column(feature)[self.dataset.rows]

    def arrow(self, start: int, stop: int) -> Any:
        from torchrec_din.data.convert import split_table

        if self._rows is None:  # rows in the split's order, one sample per row; built once
            ds = self.dataset
            self._rows = DINDataset(ds.table, ds.split, ds.schema) if ds.group_histories else ds
        return split_table(self._rows, np.arange(start, stop))


class MemorySource:
    """A built-in data set in memory (a :class:`DataSource`).

    Args:
        table (SampleTable): the samples, histories already cut to ``max_history``.
        schema (FeatureSchema): the config's features over the table's columns.
        shared_histories (bool): training items are histories with all their candidates.
    """

    def __init__(self, table: SampleTable, schema: FeatureSchema,
                 shared_histories: bool = False) -> None:
        self.table, self.schema, self.shared_histories = table, schema, shared_histories
        self.vocab: Dict[str, int] = table.vocab
        self.meta: Dict[str, Any] = table.meta

    def summary(self) -> Dict[str, Dict[str, Any]]:
        return self.table.summary()

    def splits(self, batch_sizes: Dict[str, int], seed: int, rank: int,
               world: int) -> Dict[str, MemorySplit]:
        return {s: MemorySplit(DINDataset(self.table, s, self.schema,
                                          self.shared_histories and s == "train"),
                               batch_sizes[s], s == "train", rank, world)
                for s in ("train", "valid", "test")}

    def count_ids(self, split: str, features: List[str], rows: Dict[str, int],
                  where_label: bool = False, chunk: int = 50_000) -> Dict[str, np.ndarray]:
        t, schema = self.table, self.schema
        samples = t.split_indices(split)
        if where_label:
            samples = samples[t.label[samples] > 0]
        out: Dict[str, np.ndarray] = {}
        for f in features:
            n = rows[f]
            if f in schema.pooled:
                counts = np.bincount(t.user_column(f)[t.user_row[samples]], minlength=n)
            elif f in schema.candidate_features():
                counts = np.bincount(t.candidate_column(f)[samples], minlength=n)
            else:  # a history: every behaviour of every sample's history, in chunks
                counts = np.zeros(n, np.int64)
                column = t.history_column(f)
                for start in range(0, samples.size, chunk):
                    flat, _ = t.history_positions(samples[start:start + chunk])
                    counts += np.bincount(column[flat], minlength=n)
            out[f] = counts[:n].astype(np.float64)
        return out
