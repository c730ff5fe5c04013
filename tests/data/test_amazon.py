import json

import numpy as np
import pytest

from torchrec_din.data.amazon import load_amazon_electronics, META, read_amazon_electronics, REVIEWS
from torchrec_din.data.raw import DataFormatError

# user -> [(asin, time)]; the order in the file is deliberately not the time order.
REVIEWS_DATA = {
    "U2": [("B3", 30), ("B1", 10), ("B2", 20), ("B4", 40)],
    "U1": [("B2", 5), ("B5", 7), ("B1", 6)],
    "U3": [("B4", 1), ("B5", 2), ("B3", 3), ("B1", 4), ("B6", 5)],
}
META_DATA = {  # the original dump is Python literals, not JSON
    "B1": [["Electronics", "Computers", "Laptops"]],
    "B2": [["Electronics", "Audio"], ["Electronics", "Audio", "Headphones"]],
    "B3": [["Electronics", "Cameras"]],
    "B4": [["Electronics", "Computers", "Laptops"]],
    "B5": [["Electronics", "Audio", "Headphones"]],
    "B6": [["Electronics", "TV"]],
    "B9": [["Electronics", "Unreviewed"]],
}


@pytest.fixture
def amazon_dir(tmp_path):
    with open(tmp_path / REVIEWS, "w") as f:
        for user, rows in REVIEWS_DATA.items():
            for asin, t in rows:
                f.write(json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": t,
                                    "overall": 5.0}) + "\n")
    with open(tmp_path / META, "w") as f:
        for asin, cats in META_DATA.items():
            f.write(repr({"asin": asin, "categories": cats, "title": f"item {asin}"}) + "\n")
    return tmp_path


def test_original_preprocessing(amazon_dir) -> None:
    t = read_amazon_electronics(str(amazon_dir), valid_per_user=0, test_per_user=1)
    # sorted remapping: B1..B6 -> 1..6; categories sorted: Cameras, Headphones, Laptops, TV
    assert t.vocab == {"item": 7, "cate": 5, "user": 4}
    np.testing.assert_array_equal(t.cate[t.label == 1] > 0, True)
    cate_of = dict(zip(t.item.tolist(), t.cate.tolist()))
    assert cate_of[1] == 3 and cate_of[2] == 2 and cate_of[3] == 1 and cate_of[6] == 4
    # reviews n per user -> (n - 2) train pairs + 1 test pair, as in the original
    n = {u: len(r) for u, r in REVIEWS_DATA.items()}
    assert int((t.split == 0).sum()) == 2 * sum(k - 2 for k in n.values())
    assert int((t.split == 2).sum()) == 2 * len(n)
    # U2 (dense user 2) in time order: B1 B2 B3 B4; its test positive is B4 after B1 B2 B3
    test_pos = np.nonzero((t.split == 2) & (t.label == 1) & (t.user_row == 2))[0][0]
    flat, _ = t.history_positions(np.array([test_pos]))
    assert t.item[test_pos] == 4 and t.seq_item[flat].tolist() == [1, 2, 3]
    # negatives are never reviewed by their user
    for row in np.nonzero(t.label == 0)[0]:
        u = t.user_row[row]
        assert t.item[row] not in set(t.seq_item[t.seq_offsets[u]:t.seq_offsets[u + 1]].tolist())


def test_validation_split_and_cache(amazon_dir, tmp_path) -> None:
    t = load_amazon_electronics(str(amazon_dir), cache_dir=str(tmp_path / "c"))
    assert int((t.split == 1).sum()) == 2 * 3
    again = load_amazon_electronics(str(amazon_dir), cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(t.item, again.item)


def test_malformed_line(amazon_dir) -> None:
    with open(amazon_dir / REVIEWS, "a") as f:
        f.write('{"reviewerID": "U9", "asin": "B1"\n')
    with pytest.raises(DataFormatError, match=rf"{REVIEWS}:13: not a JSON"):
        read_amazon_electronics(str(amazon_dir))
    t = read_amazon_electronics(str(amazon_dir), skip_malformed=True)
    assert t.meta["skipped_lines"] == {REVIEWS: 1}
