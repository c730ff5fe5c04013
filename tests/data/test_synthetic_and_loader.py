import numpy as np
import pytest
import torch

from torchrec_din.data.loader import DINDataset, make_loader
from torchrec_din.data.samples import load_table, save_table
from torchrec_din.data.synthetic import generate_synthetic, history_lengths


@pytest.fixture(scope="module")
def table():
    return generate_synthetic(num_users=300, num_items=500, num_cates=10, samples_per_user=5,
                              mean_length=20, max_length=60, seed=1)


@pytest.mark.parametrize("dist", ["lognormal", "zipf"])
def test_length_distributions(dist) -> None:
    lengths = history_lengths(np.random.default_rng(0), 20_000, dist, 20.0, 200)
    assert lengths.max() <= 200 and lengths.min() >= 0 and (lengths == 0).any()
    assert 14 < lengths.mean() < 24


def test_synthetic_signal_is_planted(table) -> None:
    # candidates whose category dominates the history are clicked more often
    rows = np.arange(len(table))
    flat, lengths = table.history_positions(rows)
    owner = np.repeat(rows, lengths)
    match = np.bincount(owner, weights=(table.seq_cate[flat] == table.cate[owner]),
                        minlength=rows.size) / np.maximum(lengths, 1)
    high, low = table.label[match > 0.3].mean(), table.label[match < 0.05].mean()
    assert high > low + 0.2


def test_batch_holds_the_jagged_histories(table) -> None:
    ds = DINDataset(table, "train", table.schema(["user"]))
    positions = [3, 0, 7, 2]
    batch = ds[positions]
    rows = ds.rows[positions]
    kjt = batch.sequence_features
    assert kjt.keys() == ["item", "cate", "hist_item", "hist_cate"]
    d = kjt.to_dict()
    np.testing.assert_array_equal(d["item"].values().numpy(), table.item[rows])
    hist = d["hist_item"]
    for k, row in enumerate(rows):
        start = table.seq_offsets[table.user_row[row]] + table.hist_start[row]
        expected = table.seq_item[start:start + table.hist_end[row] - table.hist_start[row]]
        np.testing.assert_array_equal(hist.to_dense()[k].numpy(), expected)
    torch.testing.assert_close(d["hist_cate"].lengths(), hist.lengths())
    np.testing.assert_array_equal(batch.labels.numpy(), table.label[rows])
    assert batch.pooled_features.keys() == ["user"]


def test_loader_is_seeded_and_workers_match(table) -> None:
    ds = DINDataset(table, "train", table.schema(["user"]))

    def labels(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return torch.cat([b.labels for b in loader]), [b.batch_size for b in loader]

    a = labels(make_loader(ds, 64, shuffle=True, seed=3), 0)
    b = labels(make_loader(ds, 64, shuffle=True, seed=3, num_workers=2), 0)
    c = labels(make_loader(ds, 64, shuffle=True, seed=3), 1)
    torch.testing.assert_close(a[0], b[0])
    assert sum(a[1]) == len(ds)
    assert not torch.equal(a[0], c[0])


def test_table_roundtrip(tmp_path, table) -> None:
    path = str(tmp_path / "t.npz")
    save_table(table, path)
    back = load_table(path)
    np.testing.assert_array_equal(back.seq_item, table.seq_item)
    assert back.vocab == table.vocab and back.meta == table.meta
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no temp file left behind


def test_failed_save_leaves_no_file(tmp_path, table, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        save_table(table, str(tmp_path / "t.npz"))
    assert list(tmp_path.iterdir()) == []


def test_ranks_split_batches_disjointly_and_evenly() -> None:
    from torchrec_din.data.loader import EpochBatchSampler

    single = list(EpochBatchSampler(1000, 64, shuffle=True, seed=5))
    per_rank = [list(EpochBatchSampler(1000, 64, shuffle=True, seed=5, rank=r, world_size=3))
                for r in range(3)]
    assert [len(b) for b in per_rank] == [5, 5, 5]  # 16 batches -> 5 rounds of 3
    assert per_rank[1][0] == single[1] and per_rank[2][1] == single[5]
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen))
