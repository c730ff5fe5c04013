"""Columnar DIN samples: per-user behaviour sequences plus per-sample slices into them.

A history is a slice ``[hist_start, hist_end)`` of its user's time-ordered sequence, so the
table holds O(interactions) ids rather than O(sum of history lengths), and a batch gathers
its jagged histories with one vectorised index. Built once from raw data, then cached on
disk (``.npz``, written atomically, keyed by a fingerprint of inputs and protocol).
"""

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from torchrec_din.io import atomic_write, remove_stale_temp_files

SPLITS = {"train": 0, "valid": 1, "test": 2}
PROTOCOLS = ("next_item", "rating")
# Bump when sample construction changes, so old caches are rebuilt.
BUILDER_VERSION = 2  # 2: candidate and sequence columns stored by name


@dataclass
class SampleTable:
    """All samples of a data set, columnar.

    Attributes:
        sequences: history column name (e.g. ``hist_item``, ``hist_cate``) -> [S] behaviour
            ids of all users back to back, oldest..newest.
        seq_offsets: [U + 1] where user u's sequence is ``[seq_offsets[u]:seq_offsets[u+1]]``
            of every sequence column.
        user_row: [M] the user (row of ``user_features`` and of the sequences) of each sample.
        hist_start, hist_end: [M] the history is positions [hist_start, hist_end) of that
            user's sequence.
        candidates: candidate column name (e.g. ``item``, ``cate``) -> [M] candidate ids.
        label: [M] float32 in {0, 1}.
        split: [M] int8: 0 train, 1 valid, 2 test.
        user_features: name -> [U] id of each pooled user feature.
        vocab: feature/table name -> number of rows its table needs (ids are < vocab).
        meta: description and counts (protocol, truncations, sizes...).
        true_prob: [M] the true click probability of each sample where the data's truth is
            known (planted synthetic data), else None: its AUC is the best any model can
            reach.
    """

    sequences: Dict[str, np.ndarray]
    seq_offsets: np.ndarray
    user_row: np.ndarray
    hist_start: np.ndarray
    hist_end: np.ndarray
    candidates: Dict[str, np.ndarray]
    label: np.ndarray
    split: np.ndarray
    user_features: Dict[str, np.ndarray]
    vocab: Dict[str, int]
    meta: Dict[str, Any] = field(default_factory=dict)
    true_prob: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def schema(self, pooled: Optional[List[str]] = None) -> "FeatureSchema":
        """This table's columns as a feature schema: one attention group (``item``, ``cate``
        against ``hist_item``, ``hist_cate``), ``pooled`` user features (default: all)."""
        from torchrec_din.data.schema import FeatureSchema

        return FeatureSchema.from_config({
            "label": "label", "group_by": "user", "dense": [],
            "groups": [{"name": "behaviour", "candidate": ["item", "cate"],
                        "history": ["hist_item", "hist_cate"]}],
            "pooled": list(self.user_features) if pooled is None else list(pooled)})

    def candidate_column(self, name: str) -> np.ndarray:
        """[M] candidate ids of column ``name`` (the built-in sets: ``item``, ``cate``)."""
        return _column(self.candidates, name, "candidate")

    def history_column(self, name: str) -> np.ndarray:
        """[S] behaviour ids of history column ``name`` (``hist_item``, ``hist_cate``)."""
        return _column(self.sequences, name, "history")

    # The built-in sets' columns by their usual names.
    @property
    def item(self) -> np.ndarray:
        return self.candidate_column("item")

    @property
    def cate(self) -> np.ndarray:
        return self.candidate_column("cate")

    @property
    def seq_item(self) -> np.ndarray:
        return self.history_column("hist_item")

    @property
    def seq_cate(self) -> np.ndarray:
        return self.history_column("hist_cate")

    def user_column(self, name: str) -> np.ndarray:
        """[U] id of pooled user feature ``name``."""
        return _column(self.user_features, name, "pooled")

    def history_lengths(self) -> np.ndarray:
        return self.hist_end - self.hist_start

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return np.nonzero(self.split == SPLITS[split])[0]

    def history_positions(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Flat positions into ``seq_*`` of the histories of ``rows``, and their lengths."""
        base = self.seq_offsets[self.user_row[rows]] + self.hist_start[rows]
        lengths = self.hist_end[rows] - self.hist_start[rows]
        return range_positions(base, lengths), lengths

    def with_max_history(self, max_history: Optional[int]) -> "SampleTable":
        """Keep only the most recent ``max_history`` behaviours of each history."""
        if not max_history:
            return self
        if max_history < 0:
            raise ValueError(f"max_history must be positive, got {max_history}")
        lengths = self.history_lengths()
        new_start = np.maximum(self.hist_start, self.hist_end - max_history)
        cut = lengths - (self.hist_end - new_start)
        meta = dict(self.meta)
        meta["max_history"] = int(max_history)
        meta["histories_truncated"] = int((cut > 0).sum())
        meta["behaviours_cut"] = int(cut.sum())
        return replace(self, hist_start=new_start, meta=meta)

    def summary(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        lengths = self.history_lengths()
        for name, code in SPLITS.items():
            mask = self.split == code
            out[name] = {
                "samples": int(mask.sum()),
                "positives": int(self.label[mask].sum()),
                "users": int(np.unique(self.user_row[mask]).size),
                "mean_history": float(lengths[mask].mean()) if mask.any() else 0.0,
                "max_history": int(lengths[mask].max()) if mask.any() else 0,
            }
        return out


_ARRAYS = ["seq_offsets", "user_row", "hist_start", "hist_end", "label", "split"]


def range_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[i] .. starts[i] + lengths[i] - 1`` of every range, back to back
    (vectorised; the flat index of jagged rows)."""
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(int(lengths.sum()), dtype=np.int64)


def _column(columns: Dict[str, np.ndarray], name: str, kind: str) -> np.ndarray:
    if name not in columns:
        raise ValueError(f"features: {name!r} is not a {kind} column of this data set; it has "
                         f"{sorted(columns)}")
    return columns[name]


def save_table(table: SampleTable, path: str, build: Optional[Dict[str, Any]] = None) -> None:
    """Write the table to ``path`` (.npz) atomically: temp file in the same folder + rename.
    ``build``: the parameters it was built with, kept in the header for :func:`cached_build`."""
    arrays = {name: getattr(table, name) for name in _ARRAYS}
    columns = {"user_feature": table.user_features, "candidate": table.candidates,
               "sequence": table.sequences}
    for kind, named in columns.items():
        for name, values in named.items():
            arrays[f"{kind}__{name}"] = values
    header = json.dumps({"vocab": table.vocab, "meta": table.meta,
                         "user_features": list(table.user_features),
                         "candidates": list(table.candidates),
                         "sequences": list(table.sequences), "build": build})
    arrays["header"] = np.frombuffer(header.encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_table(path: str) -> Tuple[SampleTable, Any]:
    """The table in ``path`` and the build parameters in its header (None if none)."""
    with np.load(path) as z:
        header = json.loads(bytes(z["header"]).decode())
        arrays = {name: z[name] for name in _ARRAYS}
        named = {kind: {n: z[f"{prefix}__{n}"] for n in header[kind]}
                 for kind, prefix in (("user_features", "user_feature"),
                                      ("candidates", "candidate"), ("sequences", "sequence"))}
    table = SampleTable(**arrays, **named, vocab=header["vocab"], meta=header["meta"])
    return table, header.get("build")


def load_table(path: str) -> SampleTable:
    return _read_table(path)[0]


def fingerprint(files: List[str], params: Dict[str, Any]) -> str:
    """Hash of the input files' bytes and the build parameters."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": BUILDER_VERSION, **params}, sort_keys=True).encode())
    for path in files:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def sample_negatives(
    rng: np.random.Generator, num_items: int, rated: np.ndarray, count: int, low: int = 1
) -> np.ndarray:
    """``count`` ids drawn uniformly from [low, num_items) minus the sorted array ``rated``."""
    allowed = num_items - low - rated.size
    if allowed <= 0:
        raise ValueError("a user has rated every item; no negative can be drawn")
    out = rng.integers(low, num_items, size=count)
    bad = np.isin(out, rated)
    while bad.any():  # rejection sampling: exact uniform over the allowed ids
        out[bad] = rng.integers(low, num_items, size=int(bad.sum()))
        bad = np.isin(out, rated)
    return out


class DataLeakageError(ValueError):
    """A sample's history would contain information from its own or a later event."""


def _duplicate_mask(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """False for every repeat of an earlier (user, item, timestamp) in input order."""
    order = np.lexsort((np.arange(users.size), timestamps, items, users))
    same = np.zeros(users.size, dtype=bool)
    if users.size > 1:
        u, i, t = users[order], items[order], timestamps[order]
        same[1:] = (u[1:] == u[:-1]) & (i[1:] == i[:-1]) & (t[1:] == t[:-1])
    keep = np.ones(users.size, dtype=bool)
    keep[order[same]] = False
    return keep


def build_from_interactions(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    ratings: Optional[np.ndarray],
    item_cate: np.ndarray,
    user_features: Dict[str, np.ndarray],
    vocab: Dict[str, int],
    protocol: str,
    valid_per_user: int,
    test_per_user: int,
    seed: int,
    positive_threshold: float = 4.0,
    duplicates: str = "error",
) -> SampleTable:
    """Build samples from interactions (already remapped to dense ids; 0 = unknown).

    Each user's interactions are ordered by timestamp, ties kept in input order (a stable
    sort). Protocols:

    * ``next_item``: every interaction i >= 1 of a user is a positive whose history is the
      items before it, paired with one negative drawn uniformly from the items the user never
      touched, with the same history.
    * ``rating``: every interaction is a sample with label ``rating >= positive_threshold``;
      its history is the user's earlier positively rated items.

    Splits are in time: per user, the last ``test_per_user`` evaluated interactions go to
    test, the ``valid_per_user`` before them to validation, the rest to train. A history only
    ever holds interactions earlier than its candidate.

    Leakage check: the same (user, item, timestamp) twice would put a candidate into its own
    history at the same timestamp. ``duplicates="error"`` (default) raises a
    :class:`DataLeakageError` naming the user and item; ``"drop"`` keeps the first copy and
    counts the dropped ones in ``meta["duplicates_dropped"]``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if protocol == "rating" and ratings is None:
        raise ValueError("protocol 'rating' needs ratings")
    if duplicates not in ("error", "drop"):
        raise ValueError(f"duplicates must be 'error' or 'drop', got {duplicates!r}")
    keep = _duplicate_mask(users, items, timestamps)
    dropped = int((~keep).sum())
    if dropped and duplicates == "error":
        first = int(np.nonzero(~keep)[0][0])
        raise DataLeakageError(
            f"{dropped} interaction(s) repeat an earlier (user, item, timestamp), e.g. user id "
            f"{int(users[first])}, item id {int(items[first])}, timestamp {timestamps[first]}: "
            "the candidate would appear in its own history at the same time. Fix the data or "
            "set data.duplicates=drop")
    users, items, timestamps = users[keep], items[keep], timestamps[keep]
    if ratings is not None:
        ratings = ratings[keep]
    rng = np.random.default_rng(seed)
    num_users = vocab["user"]
    order = np.lexsort((timestamps, users))  # by user, then time; lexsort is stable
    users, items, timestamps = users[order], items[order], timestamps[order]
    if ratings is not None:
        ratings = ratings[order]
    counts = np.bincount(users, minlength=num_users)
    starts = np.concatenate([[0], np.cumsum(counts)])

    seq_parts: List[np.ndarray] = []
    cols: Dict[str, List[np.ndarray]] = {k: [] for k in
                                         ["user_row", "hist_end", "item", "label", "split"]}
    seq_offsets = np.zeros(num_users + 1, dtype=np.int64)
    for u in range(num_users):
        u_items = items[starts[u]:starts[u + 1]]
        n = u_items.size
        if protocol == "next_item":
            seq = u_items
            pos = np.arange(1, n)  # interaction 0 has no history
            hist_end = pos
            targets = u_items[pos]
            labels = np.ones(pos.size, dtype=np.float32)
        else:
            positive = ratings[starts[u]:starts[u + 1]] >= positive_threshold
            seq = u_items[positive]
            pos = np.arange(n)
            hist_end = (np.cumsum(positive) - positive).astype(np.int64)  # positives before i
            targets = u_items
            labels = positive.astype(np.float32)
        seq_parts.append(seq)
        seq_offsets[u + 1] = seq_offsets[u] + seq.size
        split = np.zeros(pos.size, dtype=np.int8)
        m = pos.size
        split[max(0, m - test_per_user):] = SPLITS["test"]
        split[max(0, m - test_per_user - valid_per_user):max(0, m - test_per_user)] = SPLITS["valid"]
        user_row = np.full(pos.size, u, dtype=np.int64)
        if protocol == "next_item" and pos.size:
            negatives = sample_negatives(rng, vocab["item"], np.unique(u_items), pos.size)
            cols["user_row"] += [user_row, user_row]
            cols["hist_end"] += [hist_end, hist_end]
            cols["item"] += [targets, negatives]
            cols["label"] += [labels, np.zeros_like(labels)]
            cols["split"] += [split, split]
        else:
            cols["user_row"].append(user_row)
            cols["hist_end"].append(hist_end)
            cols["item"].append(targets)
            cols["label"].append(labels)
            cols["split"].append(split)

    data = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    seq_item = np.concatenate(seq_parts).astype(np.int64) if seq_parts else np.zeros(0, np.int64)
    items = data["item"].astype(np.int64)
    return SampleTable(
        sequences={"hist_item": seq_item, "hist_cate": item_cate[seq_item]},
        seq_offsets=seq_offsets,
        user_row=data["user_row"].astype(np.int64),
        hist_start=np.zeros_like(data["hist_end"], dtype=np.int64),
        hist_end=data["hist_end"].astype(np.int64),
        candidates={"item": items, "cate": item_cate[items]},
        label=data["label"].astype(np.float32),
        split=data["split"].astype(np.int8),
        user_features=user_features,
        vocab=vocab,
        meta={"protocol": protocol, "valid_per_user": valid_per_user,
              "test_per_user": test_per_user, "seed": seed, "duplicates_dropped": dropped},
    )


def cached_build(cache_dir: str, name: str, key: str, build,  # noqa: ANN001
                 params: Optional[Dict[str, Any]] = None) -> Tuple[SampleTable, bool]:
    """Load ``<cache_dir>/<name>-<key>.npz`` if present, else build and save it atomically.

    The entry's header records ``key`` and ``params`` (the build parameters); an entry whose
    header says otherwise (copied or renamed, an older format) is rebuilt, never used.

    Returns the table and whether it came from the cache.
    """
    path = os.path.join(cache_dir, f"{name}-{key}.npz")
    want = json.loads(json.dumps({"key": key, "params": params or {}}, sort_keys=True))
    removed = remove_stale_temp_files(cache_dir)
    if removed:
        print(f"[data] removed {removed} temp file(s) left by a killed run in {cache_dir}")
    if os.path.exists(path):
        try:
            table, found = _read_table(path)
            if found == want:
                return table, True
            print(f"[data] cache entry {path} was built with other parameters ({found} "
                  f"instead of {want}); rebuilding it")
        except Exception as e:  # any corruption: truncated zip, bad header, missing array
            print(f"[data] cache entry {path} is unreadable ({type(e).__name__}: {e}); "
                  "rebuilding it")
    table = build()
    save_table(table, path, want)
    return table, False
