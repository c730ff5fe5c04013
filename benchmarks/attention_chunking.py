"""Does time per behaviour grow with N because activations leave the cache? A check by chunking.

JaggedTargetAttention forward + backward (the configuration of benchmarks/attention.py:
B = 1,024 histories, D = 128, MLP (80, 40), sigmoid, raw weights), N = total behaviours from
5k to 160k (equal lengths N / B), run (a) on the whole batch and (b) on consecutive chunks
of histories holding about --chunk behaviours each (outputs concatenated, one backward), and
a plain [N, 256] x [256, 80] matrix product (forward + backward) at the same N. Prints ns per
behaviour for each and the attention's achieved GFLOP/s against the matrix product's.
Medians of --repeats runs, alternating the forms within each repeat.

    .venv/bin/python benchmarks/attention_chunking.py
"""

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from attention import D, executed_flops, HIDDEN
from torchrec_din.modules import JaggedTargetAttention

B = 1024


def _chunked(attn: JaggedTargetAttention, query: torch.Tensor, keys: torch.Tensor,
             lengths: torch.Tensor, chunk: int) -> torch.Tensor:
    # Histories per chunk so that a chunk holds about `chunk` behaviours (equal lengths).
    per = max(1, chunk // max(int(lengths[0]), 1))
    outs, start = [], 0
    for b0 in range(0, lengths.numel(), per):
        ls = lengths[b0:b0 + per]
        n = int(ls.sum())
        outs.append(attn(query[b0:b0 + per], JaggedTensor(values=keys[start:start + n],
                                                          lengths=ls)))
        start += n
    return torch.cat(outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[5_120, 20_480, 40_960, 81_920, 163_840])
    parser.add_argument("--chunk", type=int, default=8_192)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    attn = JaggedTargetAttention(D, list(HIDDEN), validate_inputs=False)
    rows: List[Dict[str, float]] = []
    for n in args.sizes:
        lengths = torch.full((B,), n // B, dtype=torch.long)
        query = torch.randn(B, D, requires_grad=True)
        keys = torch.randn(n, D, requires_grad=True)
        a = torch.randn(n, 2 * D, requires_grad=True)
        w = torch.randn(2 * D, HIDDEN[0], requires_grad=True)
        forms: Dict[str, Callable[[], None]] = {
            "whole": lambda: attn(query, JaggedTensor(values=keys, lengths=lengths)).sum()
            .backward(),
            "chunked": lambda: _chunked(attn, query, keys, lengths, args.chunk).sum().backward(),
            "matmul": lambda: (a @ w).sum().backward(),
        }
        times: Dict[str, List[float]] = {k: [] for k in forms}
        for fn in forms.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in forms.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        matmul = 3 * 2 * n * 2 * D * HIDDEN[0] / med["matmul"] / 1e9
        row = {"N": n, "whole_ns": med["whole"] / n * 1e9, "chunked_ns": med["chunked"] / n * 1e9,
               "matmul_ns": med["matmul"] / n * 1e9,
               "whole_gflops": executed_flops(n, B) / med["whole"] / 1e9,
               "chunked_gflops": executed_flops(n, B) / med["chunked"] / 1e9,
               "matmul_gflops": matmul}
        rows.append(row)
        print(f"N={n:>7}: whole {row['whole_ns']:6.0f} ns/behaviour "
              f"({row['whole_gflops']:5.1f} GFLOP/s, {row['whole_gflops'] / matmul:4.0%} of "
              f"matmul), chunked {row['chunked_ns']:6.0f} ns ({row['chunked_gflops']:5.1f}, "
              f"{row['chunked_gflops'] / matmul:4.0%}), matmul {row['matmul_ns']:5.0f} ns "
              f"({matmul:5.1f} GFLOP/s)", flush=True)
    first, last = rows[0], rows[-1]
    print(f"\nns per behaviour, N={last['N']} vs N={first['N']}: whole "
          f"x{last['whole_ns'] / first['whole_ns']:.2f}, chunked "
          f"x{last['chunked_ns'] / first['chunked_ns']:.2f}, matmul "
          f"x{last['matmul_ns'] / first['matmul_ns']:.2f}")


if __name__ == "__main__":
    main()
