"""A new data source is one class plus its registry line: a test-only source (rows as Python
lists, no SampleTable, no Parquet) trains, evaluates, regularises and reports its baseline
through the engine, which only sees the DataSource / SplitData interface."""

import json
from typing import Dict, List

import numpy as np
import pytest
from torch.utils.data import DataLoader, IterableDataset

from torchrec_din.config import load_config
from torchrec_din.data import registry
from torchrec_din.data.collate import build_batch
from torchrec_din.data.loader import _identity
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.source import EpochLoader
from torchrec_din.train import train

ITEMS, CATES, USERS = 40, 5, 12


def _rows(n: int, seed: int) -> List[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        hist = rng.integers(1, ITEMS, rng.integers(0, 6)).tolist()
        item = int(rng.integers(1, ITEMS))
        rows.append({"item": item, "cate": item % CATES, "hist_item": hist,
                     "hist_cate": [i % CATES for i in hist],
                     "user": int(rng.integers(0, USERS)),
                     "label": float(any(i % CATES == item % CATES for i in hist))})
    return rows


class _Batches(IterableDataset):
    def __init__(self, rows: List[dict], schema: FeatureSchema, size: int, shuffle: bool):
        super().__init__()
        self.rows, self.schema, self.size, self.shuffle = rows, schema, size, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        return (len(self.rows) + self.size - 1) // self.size - self.skip

    def __iter__(self):
        order = np.arange(len(self.rows))
        if self.shuffle:
            order = np.random.default_rng(self.epoch).permutation(order)
        for start in range(self.skip * self.size, len(order), self.size):
            part = [self.rows[i] for i in order[start:start + self.size]]
            lengths = np.array([len(r["hist_item"]) for r in part])
            one = np.ones(len(part), np.int64)
            yield build_batch(
                self.schema,
                candidates=[np.array([r[c] for r in part]) for c in ("item", "cate")],
                num_candidates=one,
                histories=[(np.array(sum((r[h] for r in part), []), np.int64), lengths)
                           for h in ("hist_item", "hist_cate")],
                pooled=[(np.array([r["user"] for r in part]), one)],
                dense=np.zeros((len(part), 0), np.float32),
                labels=np.array([r["label"] for r in part], np.float32))


class ListSplit:
    def __init__(self, rows: List[dict], schema: FeatureSchema, size: int, shuffle: bool):
        self.rows, self.batches = rows, _Batches(rows, schema, size, shuffle)

    def __len__(self) -> int:
        return len(self.rows)

    def loader(self, seed: int, workers: int) -> EpochLoader:
        return EpochLoader(DataLoader(self.batches, batch_size=None, collate_fn=_identity),
                           self.batches)

    def eval_batches(self):
        for batch in self.batches:
            yield batch, True

    def labels(self) -> np.ndarray:
        return np.array([r["label"] for r in self.rows], np.float32)

    def user_ids(self) -> np.ndarray:
        return np.array([r["user"] for r in self.rows])

    def true_probabilities(self):
        return None

    def candidate_ids(self, feature: str) -> np.ndarray:
        return np.array([r[feature] for r in self.rows])

    def arrow(self, start: int, stop: int):
        raise ValueError("not for this test")


class ListSource:
    shared_histories = False

    def __init__(self, config: dict) -> None:
        self.schema = FeatureSchema.from_config(config["features"])
        self.vocab = {"item": ITEMS, "cate": CATES, "user": USERS}
        self.meta = {"dataset": "lists", "protocol": "test"}
        self.rows = {"train": _rows(400, 0), "valid": _rows(80, 1), "test": _rows(80, 2)}
        self.counted: List[str] = []

    def summary(self) -> Dict[str, dict]:
        return {s: {"samples": len(r), "mean_history": float(np.mean(
            [len(x["hist_item"]) for x in r]))} for s, r in self.rows.items()}

    def splits(self, batch_sizes, seed, rank, world):
        assert world == 1
        return {s: ListSplit(r, self.schema, batch_sizes[s], s == "train")
                for s, r in self.rows.items()}

    def count_ids(self, split, features, rows, where_label=False):
        self.counted.append(split)
        out = {}
        for f in features:
            ids: List[int] = []
            for r in self.rows[split]:
                if where_label and not r["label"]:
                    continue
                ids += r[f] if isinstance(r[f], list) else [r[f]]
            out[f] = np.bincount(np.array(ids, np.int64), minlength=rows[f])[:rows[f]].astype(
                np.float64)
        return out


def test_a_test_only_source_trains_through_the_engine(tmp_path, monkeypatch) -> None:
    opened: List[ListSource] = []

    def open_lists(config, main_first):
        opened.append(main_first(lambda: ListSource(config)))
        return opened[-1]

    monkeypatch.setitem(registry.SOURCES, "lists", open_lists)  # its registry line
    config = load_config("configs/synthetic_din.yaml", [
        "data.dataset=lists", "train.epochs=2", "train.progress=false", "train.batch_size=64",
        "train.regularization=mba", "train.l2_lambda=1.0", "model.embedding_dim=4",
        "model.pooled_embedding_dim=4"])
    results = train(config, str(tmp_path / "run"))
    assert [e["epoch"] for e in results["epochs"]] == [0, 1]
    assert results["data"]["meta"]["dataset"] == "lists"
    assert results["test"]["samples"] == 80
    # The regulariser and the popularity baseline asked the source for training id counts.
    assert opened[0].counted == ["train", "train"]
    pop = results["baselines"]["popularity"]
    assert 0.0 <= pop["auc"] <= 1.0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test"]["auc"] == pytest.approx(results["test"]["auc"])


def test_an_unknown_dataset_names_the_registered_ones() -> None:
    config = load_config("configs/synthetic_din.yaml", ["data.dataset=csv"])
    with pytest.raises(ValueError, match=r"data.dataset must be one of \['amazon-electronics', "
                                         r"'movielens-100k', 'parquet', 'synthetic'\], got 'csv'"):
        registry.open_source(config)


def test_evaluation_batches_out_of_the_splits_order_are_refused(tmp_path, monkeypatch) -> None:
    """Metrics pair predictions with the split's labels by position: a split whose
    evaluation batches come in another order is an error, not silently wrong metrics."""

    class Shuffled(ListSplit):
        def eval_batches(self):
            yield from reversed([(batch, True) for batch in self.batches])

    class ShuffledSource(ListSource):
        def splits(self, batch_sizes, seed, rank, world):
            out = super().splits(batch_sizes, seed, rank, world)
            out["valid"] = Shuffled(self.rows["valid"], self.schema, 16, False)
            return out

    monkeypatch.setitem(registry.SOURCES, "lists",
                        lambda config, main_first: ShuffledSource(config))
    config = load_config("configs/synthetic_din.yaml", [
        "data.dataset=lists", "train.epochs=1", "train.progress=false", "train.batch_size=64",
        "train.regularization=none", "model.embedding_dim=4", "model.pooled_embedding_dim=4"])
    with pytest.raises(RuntimeError, match="valid: the evaluation batches are not in the "
                                           "split's order"):
        train(config, str(tmp_path / "run"))
