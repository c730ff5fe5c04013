"""Synthetic DIN data with chosen history-length distributions and a planted signal.

Each user prefers two categories; 70% of their behaviours come from them. A candidate is
clicked with probability ``sigmoid(-2 + 4 * s + 2 * seen)`` where s is the share of the
history in the candidate's category and ``seen`` says the candidate item is in the history:
the label depends on *which* behaviours match the candidate, which target attention can
pick out and sum pooling blurs. Each sample's probability is kept (``true_prob``), so the
best possible (Bayes) AUC of a split is known: evaluation reports it and the share of the
possible lift over 0.5 a model reaches.
"""

import numpy as np

from torchrec_din.data.samples import SampleTable, SPLITS


def history_lengths(rng: np.random.Generator, size: int, distribution: str,
                    mean_length: float, max_length: int) -> np.ndarray:
    """Lengths from a lognormal (sigma 1, given mean) or Zipf (a = 2, scaled to the mean)
    distribution, capped at ``max_length``; zeros (empty histories) occur."""
    if distribution == "lognormal":
        sigma = 1.0
        raw = rng.lognormal(np.log(mean_length) - sigma**2 / 2, sigma, size)
    elif distribution == "zipf":
        raw = (rng.zipf(2.0, size) - 1) * mean_length / 2.0
    else:
        raise ValueError(f"length_distribution must be lognormal or zipf, got {distribution!r}")
    return np.minimum(np.floor(raw), max_length).astype(np.int64)


def generate_synthetic(
    num_users: int = 2000,
    num_items: int = 5000,
    num_cates: int = 50,
    samples_per_user: int = 20,
    length_distribution: str = "lognormal",
    mean_length: float = 20.0,
    max_length: int = 200,
    seed: int = 0,
) -> SampleTable:
    """A SampleTable of ``num_users * samples_per_user`` samples, split 80/10/10 at random.

    Example::

        table = generate_synthetic(num_users=100, mean_length=20, max_length=200)
    """
    rng = np.random.default_rng(seed)
    item_cate = np.concatenate([[0], rng.integers(1, num_cates + 1, num_items)])
    by_cate = [np.nonzero(item_cate == c)[0] for c in range(num_cates + 1)]
    by_cate = [ids if ids.size else np.array([1]) for ids in by_cate]
    lengths = history_lengths(rng, num_users, length_distribution, mean_length, max_length)
    preferred = rng.integers(1, num_cates + 1, (num_users, 2))
    seq_parts, rows = [], []
    item_col, label_col, prob_col = [], [], []
    for u in range(num_users):
        n = int(lengths[u])
        from_pref = rng.random(n) < 0.7
        cates = np.where(from_pref, preferred[u, rng.integers(0, 2, n)],
                         rng.integers(1, num_cates + 1, n))
        seq = np.array([rng.choice(by_cate[c]) for c in cates], dtype=np.int64)
        seq_parts.append(seq)
        k = samples_per_user
        cand_from_pref = rng.random(k) < 0.5
        cand_cates = np.where(cand_from_pref, preferred[u, rng.integers(0, 2, k)],
                              rng.integers(1, num_cates + 1, k))
        cands = np.array([rng.choice(by_cate[c]) for c in cand_cates], dtype=np.int64)
        hist_cates = item_cate[seq]
        share = (hist_cates[None, :] == item_cate[cands][:, None]).mean(1) if n else np.zeros(k)
        seen = np.isin(cands, seq).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-(-2.0 + 4.0 * share + 2.0 * seen)))
        item_col.append(cands)
        prob_col.append(p)
        label_col.append((rng.random(k) < p).astype(np.float32))
        rows.append(np.full(k, u, dtype=np.int64))
    seq_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    seq_item = np.concatenate(seq_parts) if seq_parts else np.zeros(0, np.int64)
    user_row = np.concatenate(rows)
    items = np.concatenate(item_col)
    m = items.size
    split = np.full(m, SPLITS["train"], dtype=np.int8)
    r = rng.random(m)
    split[r >= 0.8] = SPLITS["valid"]
    split[r >= 0.9] = SPLITS["test"]
    return SampleTable(
        sequences={"hist_item": seq_item, "hist_cate": item_cate[seq_item]},
        seq_offsets=seq_offsets, user_row=user_row, hist_start=np.zeros(m, np.int64),
        hist_end=lengths[user_row], candidates={"item": items, "cate": item_cate[items]},
        label=np.concatenate(label_col), split=split,
        user_features={"user": np.arange(num_users, dtype=np.int64)},
        vocab={"item": num_items + 1, "cate": num_cates + 1, "user": num_users},
        meta={"dataset": "synthetic", "protocol": "planted", "seed": seed,
              "length_distribution": length_distribution, "mean_length": mean_length,
              "max_length": max_length},
        true_prob=np.concatenate(prob_col),
    )
