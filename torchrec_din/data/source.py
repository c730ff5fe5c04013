"""The one face of every data source: what the training engine, its backends, the
regulariser, the baselines, ``convert`` and ``plan`` may ask of the data.

A :class:`DataSource` is a data set as a config names it (a built-in set held in memory, or
Parquet files streamed from disk); its :meth:`~DataSource.splits` are :class:`SplitData`,
one per split as one rank sees it: a loader of ``DINBatch`` for training, batches for
evaluation, and the labels, groups and (where known) true probabilities that metrics read.
``torchrec_din.data.registry.open_source(config)`` opens the source a config names; a new
source is one module implementing these two protocols plus its registry line.
"""

from typing import Any, Dict, Iterator, List, Optional, Protocol, Tuple

import numpy as np
from torch.utils.data import DataLoader

from torchrec_din.batch import DINBatch
from torchrec_din.data.schema import FeatureSchema


class NotConvertible(ValueError):
    """``SplitData.arrow`` of a source whose rows ``convert`` does not write (they are
    Parquet files already)."""


class EpochLoader:
    """A DataLoader of ``DINBatch`` whose order is chosen per epoch: ``set_epoch(epoch,
    skip_batches)`` replays any epoch from any batch (exact resume).

    Args:
        loader (DataLoader): yields DINBatch.
        order: what holds the epoch order (a sampler or a streaming dataset) and has
            ``set_epoch(epoch, skip_batches=0)``.
    """

    def __init__(self, loader: DataLoader, order: Any) -> None:
        self.loader, self._order = loader, order

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self._order.set_epoch(epoch, skip_batches=skip_batches)

    def __iter__(self) -> Iterator[DINBatch]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class SplitData(Protocol):
    """One split of a source as one rank sees it (batch size and shuffling fixed when the
    source made it: training shuffles, evaluation keeps the split's order)."""

    def __len__(self) -> int:
        """Items of this rank's part (samples, or histories when they are shared)."""

    def loader(self, seed: int, workers: int) -> EpochLoader:
        """This rank's batches, with ``workers`` DataLoader workers."""

    def eval_batches(self) -> Iterator[Tuple[DINBatch, bool]]:
        """This rank's part of the split for a collective (sharded) evaluation as
        ``(batch, scored)``: every rank gets the same number of batches; a rank out of rows
        gets a stand-in batch with ``scored`` False, whose scores are dropped. Batches of
        the ranks in rank order are the split in order."""

    def labels(self) -> np.ndarray:
        """[M] labels of the whole split, in order."""

    def user_ids(self) -> np.ndarray:
        """[M] GAUC groups (``features.group_by``) of the whole split, in order."""

    def true_probabilities(self) -> Optional[np.ndarray]:
        """[M] true click probabilities where the data's truth is known, else None."""

    def candidate_ids(self, feature: str) -> np.ndarray:
        """[M] ids of candidate ``feature`` over the whole split, in order."""

    def arrow(self, start: int, stop: int) -> Any:
        """Rows ``[start, stop)`` of the split as a ``pyarrow.Table`` in the schema's
        columns (what ``convert`` writes); :class:`NotConvertible` where that makes no
        sense."""


class DataSource(Protocol):
    """A data set: its feature schema, table sizes, description and splits.

    Attributes:
        schema (FeatureSchema): which columns feed which features.
        vocab (Dict[str, int]): table -> rows (ids are below it).
        meta (Dict[str, Any]): description (``dataset``, ``protocol``, counts, ``multi_hot``:
            pooled features given as id lists).
        shared_histories (bool): training items carry one history and several candidates
            (``DINModel.forward_grouped``); evaluation always scores one row per sample.
    """

    schema: FeatureSchema
    vocab: Dict[str, int]
    meta: Dict[str, Any]
    shared_histories: bool

    def summary(self) -> Dict[str, Dict[str, Any]]:
        """Per split: ``samples`` and what else is known (``users``, ``positives``,
        ``mean_history``: train's is what the planner is told)."""

    def splits(self, batch_sizes: Dict[str, int], seed: int, rank: int,
               world: int) -> Dict[str, SplitData]:
        """``train``, ``valid``, ``test`` as rank ``rank`` of ``world`` sees them."""

    def count_ids(self, split: str, features: List[str], rows: Dict[str, int],
                  where_label: bool = False) -> Dict[str, np.ndarray]:
        """Occurrences of every id of each feature over a split, as training batches carry
        them (histories cut to ``max_history``); ``rows`` bounds each feature's ids;
        ``where_label`` counts positive samples only."""


def popularity_scores(source: DataSource, test: SplitData) -> np.ndarray:
    """The popularity baseline's scores of ``test``: how often each candidate's id (the
    schema's first candidate feature) was a positive in training."""
    feature = source.schema.popularity_feature()
    table = source.schema.table_of(feature)
    assert table is not None
    counts = source.count_ids("train", [feature], {feature: source.vocab[table]},
                              where_label=True)[feature]
    return counts[test.candidate_ids(feature)]


def table_id_counts(source: DataSource, tables: Dict[str, List[str]],
                    rows: Dict[str, int]) -> Dict[str, np.ndarray]:
    """Occurrences of every row of each table in the training split: the sum over the
    features that look the table up (``tables``: table -> features; ``rows``: table ->
    size)."""
    by_feature = {f: rows[t] for t, features in tables.items() for f in features}
    counts = source.count_ids("train", list(by_feature), by_feature)
    return {t: sum((counts[f] for f in features), np.zeros(rows[t]))
            for t, features in tables.items()}
