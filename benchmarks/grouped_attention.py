"""Shared histories: K candidates per history through ``attend_grouped`` vs one row per
candidate (each with its own copy of the history), same module, same pairs.

Prints forward + backward time per call and the ratio, for K = 1, 2 (a positive and its
negative, as in the ``next_item`` protocol), 10 and 100, histories lognormal (mean 20, cap
200). Outputs are checked equal before timing. Medians of ``--repeats``.

Run:
    .venv/bin/python benchmarks/grouped_attention.py
"""

import argparse


import torch

from torchrec_din import JaggedTargetAttention
from torchrec_din.ops import candidate_pairs

from attention import sample_lengths, time_it  # benchmarks/attention.py


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--histories", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64, help="D: 32 + 32, item and category")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    attn = JaggedTargetAttention(args.dim, (80, 40), "dice", "none")
    print(f"B = {args.histories} histories (lognormal mean 20, cap 200), D = {args.dim}, "
          f"attention (80, 40), Dice; forward + backward, medians of {args.repeats}")
    print("| K per history | pairs | grouped ms | one row per candidate ms | ratio |")
    print("|---|---|---|---|---|")
    for k in (1, 2, 10, 100):
        batch = max(1, args.histories // max(1, k // 10))  # keep the pair count manageable
        lengths = torch.as_tensor(sample_lengths("lognormal20", batch, seed=k))
        num = torch.full((batch,), k, dtype=torch.long)
        values = torch.randn(int(lengths.sum()), args.dim, requires_grad=True)
        query = torch.randn(batch * k, args.dim, requires_grad=True)
        pair_lengths, _, pair_behaviour = candidate_pairs(lengths, num)
        pairs = int(pair_lengths.sum())

        def grouped() -> None:
            out, _ = attn.attend_grouped(query, values, lengths, num, pairs)
            out.sum().backward()

        def per_row() -> None:
            out, _ = attn.attend(query, values.index_select(0, pair_behaviour), pair_lengths)
            out.sum().backward()

        with torch.no_grad():
            attn.eval()
            a = attn.attend_grouped(query, values, lengths, num, pairs)[0]
            b = attn.attend(query, values.index_select(0, pair_behaviour), pair_lengths)[0]
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            attn.train()
        t_grouped, t_row = time_it(grouped, args.repeats), time_it(per_row, args.repeats)
        print(f"| {k} ({batch} histories) | {pairs:,} | {t_grouped * 1e3:.1f} | "
              f"{t_row * 1e3:.1f} | {t_row / t_grouped:.2f}x |", flush=True)



if __name__ == "__main__":
    main()
