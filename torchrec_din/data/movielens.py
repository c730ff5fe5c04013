"""MovieLens-100k, from the files that ship inside the ``recbole==1.2.1`` wheel.

Set-up (``scripts/setup.sh``) copies ``ml-100k.{inter,item,user}`` out of that wheel into
``<venv>/share/torchrec_din/ml-100k``; nothing is downloaded at run time and the files are
never committed (GroupLens terms: no redistribution).

Features: candidate ``item`` and ``cate`` (genre), history ``hist_item`` / ``hist_cate``
(oldest..newest), pooled user features ``user``, ``age`` (MovieLens-1M's age buckets),
``gender``, ``occupation``. Multi-genre movies (half of them): ``genre="first"`` (default)
uses the first genre listed for the movie; ``genre="combination"`` uses the whole genre set
as one category token (e.g. "Action Thriller"), keeping all genre information in one id.
"""

import importlib.util
import math
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from torchrec_din.data.raw import read_tsv, SkipCounter, Vocabulary
from torchrec_din.data.samples import build_from_interactions, SampleTable

FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
AGE_BUCKETS = [18, 25, 35, 45, 50, 56]  # MovieLens-1M: <18, 18-24, ..., 56+
USER_FEATURES = ["user", "age", "gender", "occupation"]


def find_movielens_100k(data_dir: Optional[str] = None) -> str:
    """The folder holding the ml-100k files.

    Looks at, in order: ``data_dir``; ``$TORCHREC_DIN_ML100K``; ``<sys.prefix>/share/
    torchrec_din/ml-100k`` (where set-up puts them); an installed ``recbole`` package.
    """
    candidates: List[str] = []
    if data_dir:
        # An explicit folder is used or refused, never silently replaced by another copy.
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"data.data_dir {data_dir} does not exist (or is not a "
                                    "folder); it must hold " + ", ".join(FILES))
        missing = [f for f in FILES if not os.path.exists(os.path.join(data_dir, f))]
        if missing:
            raise FileNotFoundError(f"data.data_dir {data_dir} lacks {', '.join(missing)}; it "
                                    "must hold " + ", ".join(FILES))
        return data_dir
    if os.environ.get("TORCHREC_DIN_ML100K"):
        candidates.append(os.environ["TORCHREC_DIN_ML100K"])
    candidates.append(os.path.join(sys.prefix, "share", "torchrec_din", "ml-100k"))
    spec = importlib.util.find_spec("recbole")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(os.path.join(list(spec.submodule_search_locations)[0],
                                       "dataset_example", "ml-100k"))
    for folder in candidates:
        if all(os.path.exists(os.path.join(folder, f)) for f in FILES):
            return folder
    raise FileNotFoundError(
        "MovieLens-100k not found; looked in " + ", ".join(candidates)
        + ". Run `bash scripts/setup.sh` (it installs the files from the recbole==1.2.1 "
        "wheel) or set TORCHREC_DIN_ML100K to a folder with " + ", ".join(FILES)
    )


def _finite(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return number


def _int(value: str, what: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"{what} must be a number, got {value!r}") from None


def read_movielens_100k(
    data_dir: Optional[str] = None,
    protocol: str = "next_item",
    genre: str = "first",
    valid_per_user: int = 5,
    test_per_user: int = 5,
    positive_threshold: float = 4.0,
    seed: int = 0,
    skip_malformed: bool = False,
    duplicates: str = "error",
) -> SampleTable:
    """Parse the files and build samples (no cache; see :func:`load_movielens_100k`)."""
    if genre not in ("first", "combination"):
        raise ValueError(f"genre must be 'first' or 'combination', got {genre!r}")
    folder = find_movielens_100k(data_dir)
    skips = SkipCounter(skip_malformed)
    items, cates, users = Vocabulary(), Vocabulary(), Vocabulary()
    item_cate: Dict[int, int] = {}

    def parse_item(f: List[str], _: int):
        genres = f[3].split()
        if not genres:
            raise ValueError(f"movie {f[0]!r} has no genre")
        return f[0], genres[0] if genre == "first" else " ".join(genres)

    for raw_item, g in read_tsv(os.path.join(folder, FILES[1]),
                                ["item_id", "movie_title", "release_year", "class"],
                                skips, parse_item):
        item_cate[items.add(raw_item)] = cates.add(g)

    feats: Dict[str, Vocabulary] = {"age": Vocabulary(), "gender": Vocabulary(),
                                    "occupation": Vocabulary()}
    user_rows: Dict[int, Dict[str, int]] = {}

    def parse_user(f: List[str], _: int):
        age = _int(f[1], "age")
        return f[0], str(int(np.searchsorted(AGE_BUCKETS, age, side="right"))), f[2], f[3]

    for raw_user, age, gender, occupation in read_tsv(
            os.path.join(folder, FILES[2]), ["user_id", "age", "gender", "occupation"],
            skips, parse_user):
        user_rows[users.add(raw_user)] = {"age": feats["age"].add(age),
                                          "gender": feats["gender"].add(gender),
                                          "occupation": feats["occupation"].add(occupation)}

    u_col: List[int] = []
    i_col: List[int] = []
    r_col: List[float] = []
    t_col: List[float] = []

    def parse_inter(f: List[str], _: int):
        u, i = users.get(f[0], None), items.get(f[1], None)
        if u is None:
            raise ValueError(f"user {f[0]!r} is not in {FILES[2]}")
        if i is None:
            raise ValueError(f"item {f[1]!r} is not in {FILES[1]}")
        return u, i, _finite(f[2], "rating"), _finite(f[3], "timestamp")

    for u, i, r, t in read_tsv(os.path.join(folder, FILES[0]),
                               ["user_id", "item_id", "rating", "timestamp"], skips, parse_inter):
        u_col.append(u)
        i_col.append(i)
        r_col.append(r)
        t_col.append(t)

    cate_of_item = np.zeros(len(items), dtype=np.int64)
    for i, c in item_cate.items():
        cate_of_item[i] = c
    user_features = {"user": np.arange(len(users), dtype=np.int64)}
    for name in ("age", "gender", "occupation"):
        col = np.zeros(len(users), dtype=np.int64)
        for u, row in user_rows.items():
            col[u] = row[name]
        user_features[name] = col
    vocab = {"item": len(items), "cate": len(cates), "user": len(users),
             **{name: len(v) for name, v in feats.items()}}
    table = build_from_interactions(
        np.asarray(u_col, dtype=np.int64), np.asarray(i_col, dtype=np.int64),
        np.asarray(t_col), np.asarray(r_col), cate_of_item, user_features, vocab,
        protocol, valid_per_user, test_per_user, seed, positive_threshold, duplicates,
    )
    table.meta.update({"dataset": "movielens-100k", "genre": genre, "source": folder,
                       "interactions": len(u_col), "skipped_lines": skips.skipped,
                       "first_skipped": skips.first})
    return table


def load_movielens_100k(cache_dir: Optional[str] = None, **kwargs) -> SampleTable:  # noqa: ANN003
    """:func:`read_movielens_100k` through the on-disk cache (keyed by files + arguments)."""
    from torchrec_din.data.registry import load_builtin

    return load_builtin("movielens-100k", kwargs, cache_dir)
