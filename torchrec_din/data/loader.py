"""From a SampleTable to DINBatch mini-batches: seeded shuffling, DataLoader workers, no padding."""

from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from torchrec_din.data.collate import build_batch, DINBatch
from torchrec_din.data.samples import range_positions, SampleTable
from torchrec_din.data.schema import FeatureSchema


class DINDataset(Dataset):
    """One split of a SampleTable; ``dataset[positions]`` builds a whole DINBatch at once.

    With ``group_histories`` the items are *histories*: samples with the same user and
    history (e.g. a positive and its negative in the ``next_item`` protocol) form one item
    whose batch carries the history once and K candidates (``DINModel.forward_grouped``).

    Args:
        table (SampleTable): the samples.
        split (str): "train", "valid" or "test" (or "all").
        schema (FeatureSchema): which of the table's columns feed which features; the
            built-in tables have candidate columns ``item``, ``cate``, history columns
            ``hist_item``, ``hist_cate`` and their user features as pooled columns.
        group_histories (bool): one item per shared history instead of one per sample.

    Example::

        ds = DINDataset(table, "train", FeatureSchema.from_config(config["features"]))
        batch = ds[np.arange(256)]
    """

    def __init__(self, table: SampleTable, split: str, schema: FeatureSchema,
                 group_histories: bool = False) -> None:
        self.table = table
        self.schema = schema
        self.split = split
        self.rows = np.arange(len(table)) if split == "all" else table.split_indices(split)
        self.group_histories = group_histories
        self.group_offsets: Optional[np.ndarray] = None
        if group_histories:
            # Rows sorted so that samples sharing (user, history) are adjacent; each group is
            # one item. lexsort keeps the original order within a group (stable).
            key = (self.table.hist_end[self.rows], self.table.hist_start[self.rows],
                   self.table.user_row[self.rows])
            order = np.lexsort(key)
            self.rows = self.rows[order]
            k = np.stack([a[order] for a in key])
            new = np.ones(self.rows.size, dtype=bool)
            new[1:] = np.any(k[:, 1:] != k[:, :-1], axis=0)
            self.group_offsets = np.append(np.flatnonzero(new), self.rows.size)
        self.candidate_columns = [table.candidate_column(c) for c in schema.candidate_features()]
        self.history_columns = [table.history_column(h) for h in schema.history_features()]
        self.pooled_columns = [table.user_column(p) for p in schema.pooled]
        if schema.dense:
            raise ValueError(f"features.dense {schema.dense}: the built-in data sets have no "
                             "dense columns (Parquet input does)")
        if schema.group_by != "user" or schema.label != "label":
            raise ValueError("the built-in data sets group by 'user' and label 'label'; got "
                             f"features.group_by={schema.group_by!r}, "
                             f"features.label={schema.label!r}")

    def __len__(self) -> int:
        if self.group_offsets is not None:
            return int(self.group_offsets.size - 1)
        return int(self.rows.size)

    def labels(self) -> np.ndarray:
        """The label of each row of this split, in order."""
        return self.table.label[self.rows]

    def user_ids(self) -> np.ndarray:
        """The user of each row of this split, in order (the GAUC groups)."""
        return self.table.user_row[self.rows]

    def true_probabilities(self) -> Optional[np.ndarray]:
        """The true click probability of each row where the data's truth is known (planted
        synthetic data), else None."""
        p = self.table.true_prob
        return None if p is None else p[self.rows]

    def __getitem__(self, positions: Sequence[int]) -> DINBatch:
        t = self.table
        positions = np.asarray(positions, dtype=np.int64)
        if self.group_offsets is not None:
            starts, ends = self.group_offsets[positions], self.group_offsets[positions + 1]
            counts = ends - starts
            samples = self.rows[range_positions(starts, counts)]
            rows = self.rows[starts]  # one row per history: its history and user
        else:
            rows = self.rows[positions]
            samples, counts = rows, np.ones(rows.size, dtype=np.int64)
        flat, lengths = t.history_positions(rows)
        ones = np.ones(rows.size, np.int64)
        users = t.user_row[rows]
        return build_batch(
            self.schema,
            candidates=[c[samples] for c in self.candidate_columns],
            num_candidates=counts,
            histories=[(h[flat], lengths) for h in self.history_columns],
            pooled=[(p[users], ones) for p in self.pooled_columns],
            dense=np.zeros((rows.size, 0), np.float32),
            labels=t.label[samples],
        )


class EpochBatchSampler(Sampler[List[int]]):
    """Batches of positions; shuffled with ``seed + epoch`` so any epoch can be replayed.

    With ``world_size > 1`` (data-parallel ranks), rank r takes batches r, r + W, r + 2W...
    of the same global order, and every rank gets the same number of batches (the last
    incomplete round is dropped), as collective training needs.

    Args:
        size (int): number of samples.
        batch_size (int): samples per batch (the last one may be smaller).
        shuffle (bool): permute each epoch.
        seed (int): base seed.
        rank (int): this rank.
        world_size (int): number of ranks.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's order; ``skip_batches`` resumes part-way through it."""
        self.epoch, self.skip = epoch, skip_batches

    def _num_batches(self) -> int:
        total = (self.size + self.batch_size - 1) // self.batch_size
        return total if self.world_size == 1 else total // self.world_size

    def __len__(self) -> int:
        return self._num_batches() - self.skip

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.size)
        else:
            order = np.arange(self.size)
        for k in range(self.skip, self._num_batches()):
            start = (k * self.world_size + self.rank) * self.batch_size
            yield order[start:start + self.batch_size].tolist()


def _identity(batch: DINBatch) -> DINBatch:
    return batch


def make_loader(
    dataset: DINDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader yielding DINBatch; its ``sampler`` has ``set_epoch``.

    Example::

        loader = make_loader(DINDataset(table, "train", schema), 1024, shuffle=True)
        loader.sampler.set_epoch(epoch)
        for batch in loader: ...
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, rank, world_size)
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,  # the dataset builds whole batches from a list of positions
        collate_fn=_identity,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        # Its own generator: otherwise each epoch's iterator draws a seed from the global RNG,
        # and a resumed run's dropout masks would differ from an uninterrupted run's.
        generator=torch.Generator().manual_seed(seed),
    )
