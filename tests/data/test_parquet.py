"""Parquet input: exactly-once streaming over ranks and workers, exact resume, bad data named
by file / row group / row / column, and the converter's round trip."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.cli import main
from torchrec_din.data.loader import _identity
from torchrec_din.data.parquet import ParquetDataError, ParquetDataset, ParquetSplit
from torchrec_din.data.schema import FeatureSchema

SCHEMA = FeatureSchema.from_config({
    "label": "label", "group_by": "user",
    "groups": [{"name": "clicks", "candidate": ["item", "cate"],
                "history": ["click_item", "click_cate"]},
               {"name": "buys", "candidate": ["item"], "history": ["buy_item"]}],
    "pooled": ["user", "tags"], "dense": ["price"]})
VOCAB = {"item": 5000, "cate": 20, "user": 100, "tags": 30}


def _write(path, n, start=0, row_group=37, seed=0, **bad):
    """n samples whose candidate item is its global row number (start + i)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, n)
    buys = rng.integers(0, 3, n)
    tags = rng.integers(1, 4, n)

    def lists(lens, high):
        return [rng.integers(0, high, k).tolist() for k in lens]

    clicks = lists(lengths, 5000)
    data = {
        "item": np.arange(start, start + n, dtype=np.int64),
        "cate": rng.integers(0, 20, n), "click_item": clicks,
        "click_cate": [[v % 20 for v in c] for c in clicks], "buy_item": lists(buys, 5000),
        "user": rng.integers(0, 100, n), "tags": lists(tags, 30),
        "price": rng.random(n).astype(np.float32), "label": rng.integers(0, 2, n),
    }
    data.update(bad)
    pq.write_table(pa.table(data), path, row_group_size=row_group)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pq")
    sizes = [301, 0, 455, 77]  # an empty row-group-free file is refused, so 0 means skip
    start = 0
    for i, n in enumerate(sizes):
        if n:
            _write(d / f"part-{i}.parquet", n, start, seed=i)
            start += n
    return d, start


def _items(dataset, workers):
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_identity)
    return [b.sequence_features["item"].values().tolist() for b in loader]


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_exactly_once_per_epoch(files, world, workers) -> None:
    d, total = files
    split = ParquetSplit([str(d / "*.parquet")], SCHEMA, "train")
    assert split.num_rows == total
    for epoch in (0, 1):
        seen, counts = [], []
        for rank in range(world):
            ds = ParquetDataset(split, VOCAB, 32, True, seed=3, buffer_rows=100, rank=rank,
                                world_size=world)
            ds.set_epoch(epoch)
            batches = _items(ds, workers)
            counts.append(len(batches))
            assert len(batches) == len(ds)
            seen += [i for b in batches for i in b]
        assert sorted(seen) == list(range(total))  # nothing lost, nothing twice
        assert len(set(counts)) == 1  # every rank the same number of batches
        assert seen != list(range(total))  # shuffled


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_the_same_order(files, workers) -> None:
    d, _ = files
    split = ParquetSplit([str(d / "*.parquet")], SCHEMA, "train")
    ds = ParquetDataset(split, VOCAB, 16, True, seed=5, buffer_rows=64)
    ds.set_epoch(2)
    full = _items(ds, workers)
    for skip in (1, 7, len(full) - 1):
        ds.set_epoch(2, skip_batches=skip)
        assert _items(ds, workers) == full[skip:]
    ds.set_epoch(3)
    assert _items(ds, workers) != full  # another epoch, another order


def test_batches_carry_the_schema(files) -> None:
    d, _ = files
    split = ParquetSplit([str(d / "part-0.parquet")], SCHEMA, "valid")
    ds = ParquetDataset(split, VOCAB, 50, False)
    batch = next(iter(ds))
    table = pq.read_table(d / "part-0.parquet").slice(0, 50).to_pydict()
    seq = batch.sequence_features
    assert seq.keys() == ["item", "cate", "click_item", "click_cate", "buy_item"]
    assert seq["click_item"].values().tolist() == sum(table["click_item"], [])
    assert seq["buy_item"].lengths().tolist() == [len(v) for v in table["buy_item"]]
    assert batch.pooled_features["tags"].values().tolist() == sum(table["tags"], [])
    assert batch.pooled_features["user"].values().tolist() == table["user"]
    torch.testing.assert_close(batch.dense_features[:, 0], torch.tensor(table["price"]))
    assert batch.labels.tolist() == [float(v) for v in table["label"]]


BAD = [
    (dict(item=None), "missing column 'item'"),
    (dict(cate=np.zeros(50, np.float32)), "column 'cate' is float, expected int"),
    (dict(click_item=[[1, None]] + [[1, 2]] * 49, click_cate=[[1, 2]] * 50), "row group 0, row 0 (row 0 of the file), "
                                                   "column 'click_item': null inside the list"),
    # the second window (8 rows) of row group 0: the null lies outside the first window
    (dict(click_item=[[1, 2]] * 11 + [[None]] + [[1, 2]] * 38,
          click_cate=[[1, 2]] * 11 + [[1]] + [[1, 2]] * 38),
     "row group 0, row 11 (row 11 of the file), column 'click_item': null inside the list"),
    (dict(item=np.r_[np.arange(45), 5000, np.arange(4)]),
     "row group 1, row 5 (row 45 of the file), column 'item': id 5000 is outside table 'item'"),
    (dict(tags=[[1]] * 12 + [[3, -2]] + [[1]] * 37),
     "row group 0, row 12 (row 12 of the file), column 'tags': id -2 is outside table 'tags'"),
    (dict(label=np.r_[np.zeros(44, np.int64), 2, np.zeros(5, np.int64)]),
     "row group 1, row 4 (row 44 of the file), column 'label': label 2.0, expected 0 or 1"),
    (dict(click_cate=[[1]] * 50), "column 'click_cate': 1 behaviours, but 'click_item' has"),
    (dict(price=np.r_[np.ones(3), np.nan, np.ones(46)].astype(np.float32)),
     "row group 0, row 3 (row 3 of the file), column 'price': non-finite value nan"),
    (dict(label=np.array(["yes"] * 50)), "column 'label' is string, expected int or float"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_bad_data_names_file_row_group_row_and_column(tmp_path, bad, message) -> None:
    path = tmp_path / "bad.parquet"
    if bad.get("item", 0) is None:
        _write(path, 50, row_group=40)
        t = pq.read_table(path).drop_columns(["item"])
        pq.write_table(t, path, row_group_size=40)
    else:
        _write(path, 50, row_group=40, **bad)
    with pytest.raises(ParquetDataError) as e:
        split = ParquetSplit([str(path)], SCHEMA, "train")
        for _ in ParquetDataset(split, VOCAB, 8, False, buffer_rows=8):
            pass
    assert str(path) in str(e.value) and message in str(e.value)


def test_empty_file_and_missing_files_are_named(tmp_path) -> None:
    empty = tmp_path / "empty.parquet"
    _write(empty, 5)
    pq.write_table(pq.read_table(empty).slice(0, 0), empty)
    with pytest.raises(ParquetDataError, match="empty.parquet: the file has no rows"):
        ParquetSplit([str(empty)], SCHEMA, "train")
    with pytest.raises(ParquetDataError, match="train split: no file matches"):
        ParquetSplit([str(tmp_path / "nope-*.parquet")], SCHEMA, "train")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ParquetDataError, match="junk.parquet: not a readable Parquet file"):
        ParquetSplit([str(tmp_path / "junk.parquet")], SCHEMA, "train")


def test_two_groups_multi_hot_and_dense_train_from_the_cli(tmp_path) -> None:
    """A schema the built-in data sets cannot express: clicks and purchases against one
    candidate, a multi-hot pooled feature and a dense one, trained and served from files."""
    for split, n, seed in (("train", 700, 1), ("valid", 150, 2), ("test", 150, 3)):
        _write(tmp_path / f"{split}.parquet", n, seed=seed, row_group=128)
    schema = {"label": "label", "group_by": "user", "pooled": ["user", "tags"],
              "dense": ["price"],
              "groups": [{"name": "clicks", "candidate": ["item", "cate"],
                          "history": ["click_item", "click_cate"]},
                         {"name": "buys", "candidate": ["item"], "history": ["buy_item"]}]}
    config = {"data": {"dataset": "parquet", "num_workers": 2, "parquet": {
                  s: [str(tmp_path / f"{s}.parquet")] for s in ("train", "valid", "test")}},
              "features": schema,
              "tables": {t: {"num_embeddings": n} for t, n in VOCAB.items()},
              "model": {"embedding_dim": 8, "use_outer_product": True},
              "train": {"epochs": 2, "batch_size": 64, "progress": False,
                        "regularization": "mba", "l2_lambda": 0.01}}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    out = tmp_path / "run"
    # MBA takes a table's rows from the collections' outputs, and a multi-hot bag returns
    # their sum: refused with the reason before anything trains; plain L2 trains.
    assert main(["train", "--config", str(path), "--output-dir", str(out)]) == 1
    assert not (out / "metrics.json").exists()
    config["train"]["regularization"] = "l2"
    path.write_text(json.dumps(config))
    assert main(["train", "--config", str(path), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["samples"] == 150 and len(metrics["epochs"]) == 2

    from torchrec_din.serve import load_trained

    model, _ = load_trained(str(out))
    assert [g.name for g in model.interaction.groups] == ["clicks", "buys"]
    assert model.dense_in_features == 1
    assert model.embedding_bag_collection.embedding_bag_configs()[1].feature_names == ["tags"]

    # Served from the same files: test rows as score requests (both histories, the multi-hot
    # tags, the dense price) give the model's own probabilities on those rows.
    rows = pq.read_table(tmp_path / "test.parquet").slice(0, 6).to_pylist()
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({
        "id": i, "user": {"user": r["user"], "tags": r["tags"]}, "dense": [r["price"]],
        "history": {"clicks": {"item": r["click_item"], "cate": r["click_cate"]},
                    "buys": {"item": r["buy_item"]}},
        "candidates": {"item": [r["item"]], "cate": [r["cate"]]}}) + "\n"
        for i, r in enumerate(rows)))
    scores_path = tmp_path / "scores.jsonl"
    assert main(["score", "--checkpoint", str(out), "--input", str(requests),
                 "--output", str(scores_path)]) == 0
    scores = [json.loads(x)["scores"][0] for x in scores_path.read_text().splitlines()]
    keys = ["item", "cate", "click_item", "click_cate", "buy_item"]
    lists = [[[r[k]] if k in ("item", "cate") else r[k] for r in rows] for k in keys]
    kjt = KeyedJaggedTensor(keys=keys, values=torch.tensor(sum(sum(lists, []), [])),
                            lengths=torch.tensor([len(x) for col in lists for x in col]))
    pooled = KeyedJaggedTensor(
        keys=["user", "tags"], values=torch.tensor([r["user"] for r in rows]
                                                   + sum((r["tags"] for r in rows), [])),
        lengths=torch.tensor([1] * len(rows) + [len(r["tags"]) for r in rows]))
    with torch.no_grad():
        expected = torch.sigmoid(model(kjt, pooled, torch.tensor([[r["price"]] for r in rows])))
    torch.testing.assert_close(torch.tensor(scores), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_keeps_file_order_with_workers(files, world, workers) -> None:
    """Unshuffled batches arrive in file order whatever the workers: every prediction is
    paired with its own label and group (the fault: windows interleaved by worker)."""
    d, total = files
    split = ParquetSplit([str(d / "*.parquet")], SCHEMA, "valid")
    labels = []
    for rank in range(world):
        ds = ParquetDataset(split, VOCAB, 16, False, buffer_rows=40, rank=rank,
                            world_size=world)
        lo, hi = ds.part
        loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=_identity)
        batches = list(loader)
        assert len(batches) == len(ds)
        assert [i for b in batches for i in b.sequence_features["item"].values().tolist()] \
            == list(range(lo, hi))
        labels += [v for b in batches for v in b.labels.tolist()]
    np.testing.assert_array_equal(np.array(labels, np.float32),
                                  ParquetDataset(split, VOCAB, 16, False).labels())


def test_max_history_keeps_the_newest_behaviours(files) -> None:
    d, _ = files
    split = ParquetSplit([str(d / "part-0.parquet")], SCHEMA, "train")
    table = pq.read_table(d / "part-0.parquet").to_pydict()
    for shuffle in (False, True):
        ds = ParquetDataset(split, VOCAB, 301, shuffle, max_history=2)
        (batch,) = list(ds)
        seq = batch.sequence_features
        order = [table["item"].index(i) for i in seq["item"].values().tolist()]
        for key in ("click_item", "click_cate", "buy_item"):
            want = [table[key][r][-2:] for r in order]
            assert seq[key].lengths().tolist() == [len(w) for w in want]
            assert seq[key].values().tolist() == sum(want, [])
    assert max(len(v) for v in table["click_item"]) > 2  # the cap did cut something


def test_worker_errors_are_the_same_one_line(tmp_path) -> None:
    path = tmp_path / "bad.parquet"
    _write(path, 90, row_group=40, item=np.r_[np.arange(85), 5000, np.arange(4)])
    split = ParquetSplit([str(path)], SCHEMA, "train")
    messages = []
    for workers in (0, 2):
        loader = DataLoader(ParquetDataset(split, VOCAB, 8, False, buffer_rows=8),
                            batch_size=None, num_workers=workers, collate_fn=_identity)
        with pytest.raises(ParquetDataError) as e:
            list(loader)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "\n" not in messages[1] and "Traceback" not in messages[1]
    assert "row group 2, row 5 (row 85 of the file), column 'item': id 5000" in messages[1]


def test_a_file_changed_or_corrupted_during_the_run_is_named(tmp_path) -> None:
    path = tmp_path / "part.parquet"
    _write(path, 200, row_group=40)
    split = ParquetSplit([str(path)], SCHEMA, "train")
    _write(path, 100, row_group=50)  # replaced after the run looked at it
    with pytest.raises(ParquetDataError, match="part.parquet: changed while the run reads it"):
        list(ParquetDataset(split, VOCAB, 8, False, buffer_rows=8))
    # A damaged data page inside an intact footer: the file and row group are named.
    _write(path, 200, row_group=200)
    raw = bytearray(path.read_bytes())
    for i in range(200, 2200, 7):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    split = ParquetSplit([str(path)], SCHEMA, "train")
    with pytest.raises(ParquetDataError, match="part.parquet: row group 0 cannot be decoded"):
        list(ParquetDataset(split, VOCAB, 8, False, buffer_rows=8))


def test_a_file_in_two_splits_is_refused(files) -> None:
    from torchrec_din.data.parquet import ParquetSource

    d, _ = files
    cfg = {"buffer_rows": 64, "train": [str(d / "*.parquet")],
           "valid": [str(d / "part-3.parquet")], "test": [str(d / "part-2.parquet")]}
    with pytest.raises(ParquetDataError, match="part-2.parquet is in both the train and the "
                                               "valid split|part-3.parquet is in both the "
                                               "train and the valid split"):
        ParquetSource({"parquet": cfg, "max_history": 0}, SCHEMA, VOCAB)
    cfg.update(train=[str(d / "part-0.parquet"), str(d / "part-0.parquet")])
    with pytest.raises(ParquetDataError, match="matched twice by data.parquet.train"):
        ParquetSource({"parquet": cfg, "max_history": 0}, SCHEMA, VOCAB)


def test_a_hard_link_of_the_train_file_in_the_test_split_is_refused(files, tmp_path) -> None:
    from torchrec_din.data.parquet import ParquetSource

    d, _ = files
    link = tmp_path / "looks_new.parquet"
    os.link(d / "part-0.parquet", link)  # another name, the same rows
    cfg = {"buffer_rows": 64, "train": [str(d / "part-0.parquet")],
           "valid": [str(d / "part-2.parquet")], "test": [str(link)]}
    with pytest.raises(ParquetDataError, match="looks_new.parquet is in both the train and "
                                               "the test split"):
        ParquetSource({"parquet": cfg, "max_history": 0}, SCHEMA, VOCAB)


@pytest.mark.parametrize("column,values,message", [
    ("user", lambda n: np.where(np.arange(n) == 50, -3, 7), r"row 13 .*column 'user'.*: id -3 "
                                                             r"is outside table 'user'"),
    ("buy_item", lambda n: [[1, 2]] * 50 + [[1, 9999]] + [[3]] * (n - 51),
     r"row 13 .*column 'buy_item'.*: id 9999 is outside table 'item'"),
    ("user", lambda n: pa.array([None if i == 50 else 4 for i in range(n)], pa.int64()),
     r"row 13 .*column 'user'.*: null value"),
])
def test_id_counts_check_every_row_as_training_does(tmp_path, column, values, message) -> None:
    """MBA counts ids over the train split before the first batch: a bad value gets the
    reader's named error there too (not a numpy error about bincount)."""
    from torchrec_din.data.parquet import ParquetSource

    n = 120
    bad = values(n)
    _write(tmp_path / "train.parquet", n, **{column: bad})
    _write(tmp_path / "valid.parquet", 40, seed=1)
    _write(tmp_path / "test.parquet", 40, seed=2)
    cfg = {"buffer_rows": 64, **{s: [str(tmp_path / f"{s}.parquet")]
                                 for s in ("train", "valid", "test")}}
    source = ParquetSource({"parquet": cfg, "max_history": 0}, SCHEMA, VOCAB)
    with pytest.raises(ParquetDataError, match=message):
        source.count_ids("train", ["user", "buy_item"], {"user": 100, "buy_item": 5000})
