"""Multi-candidate serving: candidates scored per second, history shared vs copied per row.

One user arrives with one history (about 50 behaviours) and K candidates. ``shared``: the
DINScorer embeds the history once, computes the candidate-independent part of the attention
once per behaviour and pays per (candidate, behaviour) pair only for what depends on both.
``per_row``: the same pairs scored as K independent rows, each with its own copy of the
history (what a padded DIN serving path does), through the same scorer so that only the
sharing differs. Both are checked equal before timing. Medians of repeated runs, one thread
pool of this machine, eval mode, no autograd.

Run:
    .venv/bin/python benchmarks/serving.py
"""

import argparse

import numpy as np
import torch

from attention import time_it  # benchmarks/attention.py: median of repeated runs

from torchrec_din.serve import DINScorer
from torchrec_din.train.builder import build_model
from torchrec_din.train.config import load_config

VOCAB = {"item": 1683, "cate": 20, "user": 944, "age": 8, "gender": 3, "occupation": 22}


def requests(users: int, k: int, history: int, seed: int):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(history, users), 1, None)
    n = int(lengths.sum())
    hist = np.stack([rng.integers(1, VOCAB["item"], n), rng.integers(1, VOCAB["cate"], n)], 1)
    cand = np.stack([rng.integers(1, VOCAB["item"], users * k),
                     rng.integers(1, VOCAB["cate"], users * k)], 1)
    pooled = np.stack([rng.integers(0, VOCAB[f], users) for f in ("user", "age", "gender",
                                                                  "occupation")], 1)
    return (torch.from_numpy(hist), torch.from_numpy(lengths), torch.from_numpy(cand),
            torch.full((users,), k), torch.from_numpy(pooled), torch.zeros(users, 0))


def per_row(inputs):
    """The same pairs as independent rows: every candidate gets its own copy of the history."""
    hist, lengths, cand, counts, pooled, dense = inputs
    starts = torch.cumsum(lengths, 0) - lengths
    rows = []
    for u in range(lengths.numel()):
        h = hist[starts[u]:starts[u] + lengths[u]]
        rows.append(h.repeat(int(counts[u]), 1))
    user_of = torch.repeat_interleave(torch.arange(lengths.numel()), counts)
    return (torch.cat(rows), lengths.index_select(0, user_of), cand,
            torch.ones(cand.size(0), dtype=torch.long), pooled.index_select(0, user_of),
            dense.index_select(0, user_of))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--history", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_config("configs/movielens_din.yaml")
    scorer = DINScorer(build_model(VOCAB, config).eval()).eval()
    print(f"DIN scorer (embedding 32+32, attention (80, 40), over arch (200, 80)), history "
          f"~{args.history}, {torch.get_num_threads()} threads, medians of {args.repeats}\n")
    print(f"{'K':>6} {'users':>6} | {'shared cand/s':>14} {'per-row cand/s':>15} | {'ratio':>6}")
    with torch.no_grad():
        for k, users in ((100, 8), (1000, 1)):
            inputs = requests(users, k, args.history, seed=k)
            rows = per_row(inputs)
            torch.testing.assert_close(scorer(*inputs), scorer(*rows), rtol=1e-4, atol=1e-4)
            shared = time_it(lambda: scorer(*inputs), args.repeats)
            copied = time_it(lambda: scorer(*rows), args.repeats)
            total = users * k
            print(f"{k:>6} {users:>6} | {total / shared:>14,.0f} {total / copied:>15,.0f} | "
                  f"{copied / shared:>5.2f}x")


if __name__ == "__main__":
    main()
