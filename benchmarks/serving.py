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

# benchmarks/attention.py: median of repeated runs, the --malloc flag
from attention import add_malloc_flag, apply_malloc, time_it

from torchrec_din.serve import DINScorer
from torchrec_din.serve.scorer import pooled_kjt
from torchrec_din.build import build_model
from torchrec_din.config import load_config

POOLED = ["user", "age", "gender", "occupation"]  # the config's features.pooled
VOCAB = {"item": 1683, "cate": 20, "user": 944, "age": 8, "gender": 3, "occupation": 22}


def requests(users: int, k: int, history: int, seed: int):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(history, users), 1, None)
    n = int(lengths.sum())
    hist = np.stack([rng.integers(1, VOCAB["item"], n), rng.integers(1, VOCAB["cate"], n)], 1)
    cand = np.stack([rng.integers(1, VOCAB["item"], users * k),
                     rng.integers(1, VOCAB["cate"], users * k)], 1)
    pooled = np.stack([rng.integers(0, VOCAB[f], users) for f in POOLED], 1)
    # DINScorer's inputs: one history (ids and lengths) per attention group, here one group.
    return ([torch.from_numpy(hist)], [torch.from_numpy(lengths)], torch.from_numpy(cand),
            torch.full((users,), k), torch.from_numpy(pooled), torch.zeros(users, 0))


def scorer_inputs(inputs):
    """DINScorer's arguments: the [U, P] pooled id matrix as the pooled KeyedJaggedTensor."""
    hist, lengths, cand, counts, pooled, dense = inputs
    return hist, lengths, cand, counts, pooled_kjt(POOLED, pooled), dense


def per_row(inputs):
    """The same pairs as independent rows: every candidate gets its own copy of the history."""
    (hist,), (lengths,), cand, counts, pooled, dense = inputs
    starts = torch.cumsum(lengths, 0) - lengths
    rows = []
    for u in range(lengths.numel()):
        h = hist[starts[u]:starts[u] + lengths[u]]
        rows.append(h.repeat(int(counts[u]), 1))
    user_of = torch.repeat_interleave(torch.arange(lengths.numel()), counts)
    return ([torch.cat(rows)], [lengths.index_select(0, user_of)], cand,
            torch.ones(cand.size(0), dtype=torch.long), pooled.index_select(0, user_of),
            dense.index_select(0, user_of))


def executed_flops(config, inputs) -> float:
    """FLOPs the shared path executes (matrix products and the per-pair element work): the
    behaviour and candidate parts of the first attention layer once per behaviour / candidate,
    the rest per (candidate, behaviour) pair, the over arch per candidate."""
    (hist,), (lengths,), cand, counts, pooled, _ = inputs
    d = 2 * config["model"]["embedding_dim"]
    h1, h2 = config["model"]["attention_hidden_units"]
    n, k = hist.size(0), cand.size(0)
    pairs = int((lengths * counts).sum())
    first = (n + k) * 2 * d * h1 + pairs * (d + 2 * d * h1 + 2 * h1)
    rest = pairs * (2 * h1 * h2 + 2 * h2 + 2 * d)
    over_in = 2 * d + pooled.size(1) * config["model"]["pooled_embedding_dim"]
    sizes = [over_in] + list(config["model"]["over_arch_layer_sizes"]) + [1]
    over = k * sum(2 * a * b for a, b in zip(sizes, sizes[1:]))
    return float(first + rest + over)


def matmul_gflops(rows: int, d: int, h: int, repeats: int) -> float:
    """A plain [rows, d] x [d, h] product, forward only (serving has no backward)."""
    a, w = torch.randn(rows, d), torch.randn(d, h)
    return 2 * rows * d * h / time_it(lambda: a @ w, repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--history", type=int, default=50)
    add_malloc_flag(parser)
    args = parser.parse_args()
    malloc = apply_malloc(args)
    torch.manual_seed(0)
    config = load_config("configs/movielens_din.yaml")
    scorer = DINScorer(build_model(VOCAB, config).eval()).eval()
    m = config["model"]
    d = 2 * m["embedding_dim"]
    print(f"DIN scorer (embedding {m['embedding_dim']}+{m['embedding_dim']}, attention "
          f"{tuple(m['attention_hidden_units'])}, over arch {tuple(m['over_arch_layer_sizes'])}), "
          f"history ~{args.history}, {torch.get_num_threads()} threads, {malloc}, medians of "
          f"{args.repeats}\n")
    print(f"{'K':>6} {'users':>6} | {'shared cand/s':>14} {'per-row cand/s':>15} | {'ratio':>6} "
          f"| {'shared GFLOP/s':>14} {'matmul GFLOP/s':>15}")
    with torch.no_grad():
        for k, users in ((100, 8), (1000, 1)):
            inputs = requests(users, k, args.history, seed=k)
            rows = scorer_inputs(per_row(inputs))
            assert scorer.pooled_features == POOLED
            shared_inputs = scorer_inputs(inputs)
            torch.testing.assert_close(scorer(*shared_inputs), scorer(*rows), rtol=1e-4,
                                       atol=1e-4)
            shared = time_it(lambda: scorer(*shared_inputs), args.repeats)
            copied = time_it(lambda: scorer(*rows), args.repeats)
            total = users * k
            gflops = executed_flops(config, inputs) / shared / 1e9
            pairs = int((inputs[1][0] * inputs[3]).sum())
            reference = matmul_gflops(pairs, d, m["attention_hidden_units"][0], args.repeats)
            print(f"{k:>6} {users:>6} | {total / shared:>14,.0f} {total / copied:>15,.0f} | "
                  f"{copied / shared:>5.2f}x | {gflops:>14.1f} {reference:>9.1f} "
                  f"({gflops / reference:.0%})")


if __name__ == "__main__":
    main()
