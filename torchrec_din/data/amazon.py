"""Amazon Electronics, preprocessed as the original DIN code does, for users who have the files.

Inputs (not obtainable here; bring your own): ``reviews_Electronics_5.json`` (one JSON
object per line with ``reviewerID``, ``asin``, ``unixReviewTime``) and
``meta_Electronics.json`` (one object per line, JSON or the Python-literal form of the
original dump, with ``asin`` and ``categories``).

As in the original: an item's category is the last entry of its last category path; ids are
remapped in sorted order; each user's reviews are sorted by time; review i >= 1 is a positive
with the items before it as history, paired with a uniformly drawn item the user never
reviewed. The last review per user is the test pair (``test_per_user=1``). Set
``valid_per_user=0`` to get exactly the original train/test split; the default 1 carves the
second-to-last review out of training for model selection.
"""

import ast
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from torchrec_din.data.raw import DataFormatError, SkipCounter
from torchrec_din.data.samples import build_from_interactions, SampleTable

REVIEWS = "reviews_Electronics_5.json"
META = "meta_Electronics.json"


def _records(path: str, skips: SkipCounter, required: Tuple[str, ...]):
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            truncated = "" if line.endswith("\n") else " (the file looks truncated)"
            try:
                try:
                    record: Any = json.loads(line)
                except json.JSONDecodeError:
                    record = ast.literal_eval(line.strip())  # the original meta dump's format
            except (ValueError, SyntaxError):
                skips.handle(DataFormatError(path, number, f"not a JSON/Python object{truncated}: "
                                                           f"{line.strip()[:80]!r}"))
                continue
            if not isinstance(record, dict) or any(k not in record for k in required):
                skips.handle(DataFormatError(path, number, f"expected an object with keys "
                                                           f"{list(required)}{truncated}"))
                continue
            yield number, record


def read_amazon_electronics(
    data_dir: str,
    valid_per_user: int = 1,
    test_per_user: int = 1,
    seed: int = 0,
    skip_malformed: bool = False,
    duplicates: str = "error",
) -> SampleTable:
    """Parse the two files and build next-item samples (no cache)."""
    skips = SkipCounter(skip_malformed)
    reviews: List[Tuple[str, str, int]] = []
    reviews_path = os.path.join(data_dir, REVIEWS)
    for number, r in _records(reviews_path, skips, ("reviewerID", "asin", "unixReviewTime")):
        try:
            reviews.append((str(r["reviewerID"]), str(r["asin"]), int(r["unixReviewTime"])))
        except (TypeError, ValueError):
            skips.handle(DataFormatError(reviews_path, number, "unixReviewTime must be an integer"))
    reviewed = {asin for _, asin, _ in reviews}
    category: Dict[str, str] = {}
    meta_path = os.path.join(data_dir, META)
    for number, m in _records(meta_path, skips, ("asin", "categories")):
        asin = str(m["asin"])
        if asin not in reviewed:
            continue
        cats = m["categories"]
        if not cats or not isinstance(cats, list) or not cats[-1]:
            skips.handle(DataFormatError(meta_path, number, f"item {asin!r} has no category"))
            continue
        category[asin] = str(cats[-1][-1])
    missing = sorted(reviewed - set(category))
    if missing:
        raise ValueError(f"{meta_path}: no category for {len(missing)} reviewed items, "
                         f"e.g. {missing[:3]}")
    # Sorted remapping as in the original; 0 stays the unknown id.
    item_ids = {a: i + 1 for i, a in enumerate(sorted(category))}
    cate_ids = {c: i + 1 for i, c in enumerate(sorted(set(category.values())))}
    user_ids = {u: i + 1 for i, u in enumerate(sorted({u for u, _, _ in reviews}))}
    item_cate = np.zeros(len(item_ids) + 1, dtype=np.int64)
    for asin, i in item_ids.items():
        item_cate[i] = cate_ids[category[asin]]
    users = np.array([user_ids[u] for u, _, _ in reviews], dtype=np.int64)
    items = np.array([item_ids[a] for _, a, _ in reviews], dtype=np.int64)
    times = np.array([t for _, _, t in reviews], dtype=np.float64)
    vocab = {"item": len(item_ids) + 1, "cate": len(cate_ids) + 1, "user": len(user_ids) + 1}
    table = build_from_interactions(
        users, items, times, None, item_cate, {"user": np.arange(vocab["user"], dtype=np.int64)},
        vocab, "next_item", valid_per_user, test_per_user, seed, duplicates=duplicates)
    table.meta.update({"dataset": "amazon-electronics", "source": data_dir,
                       "interactions": len(reviews), "skipped_lines": skips.skipped,
                       "first_skipped": skips.first})
    return table


def load_amazon_electronics(data_dir: str, cache_dir: Optional[str] = None,
                            **kwargs) -> SampleTable:  # noqa: ANN003
    """:func:`read_amazon_electronics` through the on-disk cache."""
    from torchrec_din.data.registry import load_builtin

    return load_builtin("amazon-electronics", {"data_dir": data_dir, **kwargs}, cache_dir)
