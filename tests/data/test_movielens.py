import os
import shutil

import numpy as np
import pytest

from torchrec_din.data.movielens import FILES, find_movielens_100k, load_movielens_100k, read_movielens_100k
from torchrec_din.data.raw import DataFormatError
from torchrec_din.data.samples import SPLITS


@pytest.fixture(scope="module")
def raw():
    folder = find_movielens_100k()
    inter = np.loadtxt(os.path.join(folder, FILES[0]), skiprows=1, dtype=np.int64)
    return folder, inter


@pytest.fixture(scope="module")
def next_item():
    return read_movielens_100k(protocol="next_item")


def _timestamps(table, raw_inter):
    # ML-100k has one rating per (user, item); dense ids follow first appearance in the files.
    return {(int(u), int(i)): int(t) for u, i, _, t in raw_inter}


def test_sizes(next_item) -> None:
    s = next_item.summary()
    assert next_item.meta["interactions"] == 100_000
    assert s["test"]["samples"] == 943 * 5 * 2 and s["valid"]["samples"] == 943 * 5 * 2
    # every interaction but each user's first is a positive, each with one negative
    assert len(next_item) == 2 * (100_000 - 943)
    assert next_item.vocab["item"] == 1683 and next_item.vocab["cate"] == 20


def test_histories_hold_only_earlier_interactions(next_item, raw) -> None:
    folder, inter = raw
    t = next_item
    # map dense ids back to raw tokens through the same first-seen order
    item_tokens = np.loadtxt(os.path.join(folder, FILES[1]), skiprows=1, usecols=0, dtype=np.int64,
                             delimiter="\t")
    user_tokens = np.loadtxt(os.path.join(folder, FILES[2]), skiprows=1, usecols=0, dtype=np.int64,
                             delimiter="\t")
    ts = {(int(u), int(i)): int(time) for u, i, _, time in inter}
    rng = np.random.default_rng(0)
    positives = np.nonzero(t.label == 1)[0]
    for row in rng.choice(positives, 400, replace=False):
        u_tok = int(user_tokens[t.user_row[row] - 1])
        target_time = ts[(u_tok, int(item_tokens[t.item[row] - 1]))]
        flat, _ = t.history_positions(np.array([row]))
        hist_times = [ts[(u_tok, int(item_tokens[i - 1]))] for i in t.seq_item[flat]]
        assert all(h <= target_time for h in hist_times)
        assert t.item[row] not in set(t.seq_item[flat].tolist())  # no rating twice in ML-100k
    # the split is in time: per user, train < valid < test positions
    for u in rng.choice(np.unique(t.user_row), 50, replace=False):
        rows = np.nonzero((t.user_row == u) & (t.label == 1))[0]
        ends = {name: t.hist_end[rows[t.split[rows] == code]] for name, code in SPLITS.items()}
        assert ends["train"].max() < ends["valid"].min() <= ends["valid"].max() < ends["test"].min()


def test_negatives_never_rated_and_share_the_history(next_item) -> None:
    t = next_item
    for u in np.unique(t.user_row)[:200]:
        rated = set(t.seq_item[t.seq_offsets[u]:t.seq_offsets[u + 1]].tolist())
        rows = np.nonzero(t.user_row == u)[0]
        neg = rows[t.label[rows] == 0]
        assert not rated & set(t.item[neg].tolist())
        pos = rows[t.label[rows] == 1]
        np.testing.assert_array_equal(np.sort(t.hist_end[pos]), np.sort(t.hist_end[neg]))


def test_rating_protocol_histories_are_earlier_positives() -> None:
    t = read_movielens_100k(protocol="rating", valid_per_user=10, test_per_user=10)
    assert len(t) == 100_000
    for u in np.unique(t.user_row)[:100]:
        rows = np.nonzero(t.user_row == u)[0]  # in time order
        # the history of the k-th interaction = positives among the first k-1
        expected = np.concatenate([[0], np.cumsum(t.label[rows])[:-1]])
        np.testing.assert_array_equal(t.hist_end[rows], expected)
        seq = t.seq_item[t.seq_offsets[u]:t.seq_offsets[u + 1]]
        np.testing.assert_array_equal(seq, t.item[rows][t.label[rows] == 1])


def test_genre_combination_keeps_all_genres() -> None:
    first = read_movielens_100k(genre="first")
    combo = read_movielens_100k(genre="combination")
    assert combo.vocab["cate"] > first.vocab["cate"] > 10


def test_max_history_keeps_most_recent(next_item) -> None:
    capped = next_item.with_max_history(10)
    assert capped.history_lengths().max() == 10
    row = int(np.argmax(next_item.history_lengths()))
    full, _ = next_item.history_positions(np.array([row]))
    cut, _ = capped.history_positions(np.array([row]))
    np.testing.assert_array_equal(next_item.seq_item[full][-10:], capped.seq_item[cut])
    assert capped.meta["behaviours_cut"] == int(
        (next_item.history_lengths() - capped.history_lengths()).sum())


@pytest.fixture
def copied(tmp_path, raw):
    folder, _ = raw
    for f in FILES:
        shutil.copy(os.path.join(folder, f), tmp_path / f)
    return tmp_path


def test_malformed_line_names_file_and_line(copied) -> None:
    path = copied / FILES[0]
    lines = path.read_text().splitlines(keepends=True)
    lines[56] = "196\t242\n"  # line 57 of the file
    path.write_text("".join(lines))
    with pytest.raises(DataFormatError, match=r"ml-100k.inter:57: expected 4 tab-separated"):
        read_movielens_100k(data_dir=str(copied))
    table = read_movielens_100k(data_dir=str(copied), skip_malformed=True)
    assert table.meta["skipped_lines"] == {"ml-100k.inter": 1}
    assert table.meta["interactions"] == 99_999


def test_truncated_file_is_reported(copied) -> None:
    path = copied / FILES[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 - 3])  # cut mid-line
    with pytest.raises(DataFormatError, match=r"ml-100k.inter:\d+: .*truncated"):
        read_movielens_100k(data_dir=str(copied))


def test_bad_value_names_file_and_line(copied) -> None:
    path = copied / FILES[2]
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[9].rstrip("\n").split("\t")
    fields[1] = "old"
    lines[9] = "\t".join(fields) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(DataFormatError, match=r"ml-100k.user:10: age must be a number, got 'old'"):
        read_movielens_100k(data_dir=str(copied))


def test_cache_reuses_and_rebuilds(tmp_path, copied) -> None:
    cache = tmp_path / "cache"
    a = load_movielens_100k(cache_dir=str(cache), data_dir=str(copied), protocol="next_item")
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].endswith(".npz")
    b = load_movielens_100k(cache_dir=str(cache), data_dir=str(copied), protocol="next_item")
    np.testing.assert_array_equal(a.item, b.item)
    assert sorted(os.listdir(cache)) == files  # reused
    load_movielens_100k(cache_dir=str(cache), data_dir=str(copied), protocol="rating")
    assert len(os.listdir(cache)) == 2  # a changed protocol rebuilds
    with open(copied / FILES[0], "a") as f:
        f.write("1\t1\t5\t999999999\n")
    load_movielens_100k(cache_dir=str(cache), data_dir=str(copied), protocol="rating")
    assert len(os.listdir(cache)) == 3  # changed input file rebuilds


def test_duplicate_interaction_is_detected_as_leakage(copied) -> None:
    from torchrec_din.data.samples import DataLeakageError

    with open(copied / FILES[0], "a") as f:
        f.write("196\t242\t3\t881250949\n")  # the file's first rating, again
    with pytest.raises(DataLeakageError, match=r"1 interaction\(s\) repeat .* timestamp 881250949"):
        read_movielens_100k(data_dir=str(copied))
    table = read_movielens_100k(data_dir=str(copied), duplicates="drop")
    assert table.meta["duplicates_dropped"] == 1
    assert len(table) == 2 * (100_000 - 943)
