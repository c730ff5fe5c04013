"""JaggedTargetAttention against the padded DIN formulation: time, memory, FLOP/s, scaling.

Forward + backward of DIN target attention (B = 1024, D = 128 = item 64 + category 64,
attention MLP (80, 40), sigmoid, raw weights as in the paper) on three history-length
distributions:

* ``movielens``: the real history lengths of MovieLens-100k (next_item protocol, training
  split, uncapped), sampled B at a time;
* ``lognormal20``: lognormal, mean about 20, capped at 200;
* ``long200``: lognormal, mean about 200, capped at 2,000.

Compared, with the same parameters:

* ``jagged``: ours, on the KeyedJaggedTensor-style values [N, D] + lengths [B];
* ``padded_fixed``: histories padded to the distribution's cap (DeepCTR / fun-rec style);
* ``padded_batch``: padded to the longest history of each batch (the original code's style).

The padded versions get already padded keys (their data loaders pad), so only attention is
timed. Times are medians of ``--repeats`` runs; peak memory is the most memory allocated at
once during one forward + backward (torch profiler allocation events; inputs excluded).
GFLOP/s: the FLOPs our decomposition executes on the real behaviours, per second, next to a
plain [N, 2D] x [2D, 80] matrix product (forward + backward) timed in the same run.

Run:
    .venv/bin/python benchmarks/attention.py            # tables + benchmarks/attention_scaling.png
    .venv/bin/python benchmarks/attention.py --quick    # fewer repeats
"""

import argparse
import json
import os
import statistics
import time
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din import JaggedTargetAttention

B, D, HIDDEN = 1024, 128, (80, 40)
CAPS = {"movielens": None, "lognormal20": 200, "long200": 2000}
HERE = os.path.dirname(os.path.abspath(__file__))


def movielens_lengths() -> np.ndarray:
    from torchrec_din.data.movielens import read_movielens_100k

    table = read_movielens_100k(protocol="next_item")
    return table.history_lengths()[table.split_indices("train")]


def sample_lengths(dist: str, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dist == "movielens":
        pool = movielens_lengths()
        return rng.choice(pool, batch)
    mean, cap = (20.0, 200) if dist == "lognormal20" else (200.0, 2000)
    sigma = 1.0
    raw = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, batch)
    return np.minimum(np.floor(raw), cap).astype(np.int64)


def fixed_cap(dist: str) -> int:
    if dist == "movielens":
        return int(movielens_lengths().max())
    return int(CAPS[dist])


def padded_attention(attn: JaggedTargetAttention, query: Tensor, keys: Tensor,
                     lengths: Tensor) -> Tensor:
    """The usual padded DIN attention (DeepCTR's LocalActivationUnit + masked sum pooling)."""
    unit = attn.unit
    t = keys.size(1)
    q = query.unsqueeze(1).expand(-1, t, -1)
    x = torch.cat([keys, q, keys - q, keys * q], dim=-1)            # [B, T, 4D]
    h = torch.sigmoid(F.linear(x, unit.input_layer.weight, unit.input_layer.bias))
    for layer in unit.hidden.layers:
        h = layer(h)
    scores = unit.output_layer(h).squeeze(-1)                        # [B, T]
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    scores = scores * mask
    return torch.bmm(scores.unsqueeze(1), keys).squeeze(1)           # [B, D]


def make_inputs(lengths_np: np.ndarray, impl: str, cap: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.from_numpy(lengths_np.astype(np.int64))
    n, b = int(lengths.sum()), lengths.numel()
    query = torch.randn(b, D, generator=g, requires_grad=True)
    values = torch.randn(n, D, generator=g)
    if impl == "jagged":
        return query, values.requires_grad_(), lengths
    t = cap if impl == "padded_fixed" else int(lengths.max())
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    keys = torch.zeros(b, t, D)
    keys[mask] = values
    return query, keys.requires_grad_(), lengths


def step_fn(attn: JaggedTargetAttention, impl: str, inputs) -> Callable[[], None]:
    query, keys, lengths = inputs
    if impl == "jagged":
        jt = JaggedTensor(values=keys, lengths=lengths)

        def run() -> None:
            attn(query, jt).sum().backward()
    else:
        def run() -> None:
            padded_attention(attn, query, keys, lengths).sum().backward()
    return run


def add_malloc_flag(parser: argparse.ArgumentParser, default: str = "keep") -> None:
    """--malloc keep|default: the package's training and score CLI call
    torchrec_din.allocator.keep_freed_memory() by default, so the benchmarks do too."""
    parser.add_argument("--malloc", choices=["keep", "default"], default=default,
                        help="keep: keep_freed_memory() first, as training and scoring do by "
                             "default; default: glibc's own malloc behaviour")


def apply_malloc(args: argparse.Namespace) -> str:
    if args.malloc == "keep":
        from torchrec_din.allocator import keep_freed_memory

        assert keep_freed_memory(), "glibc did not take the malloc settings"
    return f"malloc {args.malloc}"


def time_it(fn: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def executed_flops(n: int, b: int) -> float:
    """FLOPs of our forward + backward (matmuls and elementwise dominating terms)."""
    h1, h2 = HIDDEN
    fwd = n * (2 * (2 * D * h1)        # e @ (W_e + W_d), (e * v) @ W_p
               + 2 * h1 * h2 + 2 * h2  # layers 2 and 3
               + 4 * D)                # e * v, w * e, segment sum
    fwd += b * 2 * D * h1              # the candidate part, on B rows
    return 3.0 * fwd                   # backward is about twice the forward


def matmul_gflops(n: int, repeats: int) -> float:
    a = torch.randn(n, 2 * D, requires_grad=True)
    w = torch.randn(2 * D, HIDDEN[0], requires_grad=True)

    def run() -> None:
        (a @ w).sum().backward()

    seconds = time_it(run, repeats)
    return 3 * 2 * n * 2 * D * HIDDEN[0] / seconds / 1e9


def peak_memory_mb(fn: Callable[[], None]) -> float:
    """Peak of the memory allocated during one call (inputs and parameters excluded): the
    running sum of the torch profiler's allocation and free events, in time order."""
    from torch.profiler import profile, ProfilerActivity

    fn()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=os.path.join(HERE, "attention_results.json"))
    parser.add_argument("--dists", nargs="+", choices=list(CAPS), default=list(CAPS),
                        help="distributions to run (all three also write the JSON and plot)")
    # glibc's default here: the padded forms at 2,000 x 1,024 peak at 12 GB with it and at
    # 22 GB with keep_freed_memory() (their freed blocks of varying size fragment the kept
    # heap), too close to this machine's 24 GB. The jagged rows with keep:
    # --malloc keep --dists movielens lognormal20.
    add_malloc_flag(parser, default="default")
    args = parser.parse_args()
    malloc = apply_malloc(args)
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    attn = JaggedTargetAttention(D, HIDDEN)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {malloc}; B={B}, D={D}, "
          f"MLP {HIDDEN}, forward+backward, medians of {repeats}\n")
    results: Dict[str, Dict] = {}
    header = (f"{'distribution':<12} {'N':>8} {'T_fix':>6} {'T_bat':>6} | {'jagged ms':>9} "
              f"{'fixed ms':>9} {'batch ms':>9} | {'x fixed':>7} {'x batch':>7} | "
              f"{'mem MB j/f/b':>18} | {'GFLOP/s':>7} {'matmul':>7} {'%':>4}")
    print(header)
    print("-" * len(header))
    for dist in args.dists:
        lengths = sample_lengths(dist, B, seed=1)
        n = int(lengths.sum())
        cap = fixed_cap(dist)
        row: Dict[str, float] = {"N": n, "T_fixed": cap, "T_batch": int(lengths.max()),
                                 "mean_length": float(lengths.mean())}
        for impl in ("jagged", "padded_fixed", "padded_batch"):
            inputs = make_inputs(lengths, impl, cap)
            row[f"{impl}_ms"] = time_it(step_fn(attn, impl, inputs), repeats) * 1e3
            row[f"{impl}_mb"] = peak_memory_mb(step_fn(attn, impl, inputs))
            del inputs
        row["gflops"] = executed_flops(n, B) / (row["jagged_ms"] / 1e3) / 1e9
        row["matmul_gflops"] = matmul_gflops(n, repeats)
        results[dist] = row
        print(f"{dist:<12} {n:>8} {cap:>6} {row['T_batch']:>6} | {row['jagged_ms']:>9.1f} "
              f"{row['padded_fixed_ms']:>9.1f} {row['padded_batch_ms']:>9.1f} | "
              f"{row['padded_fixed_ms'] / row['jagged_ms']:>6.1f}x "
              f"{row['padded_batch_ms'] / row['jagged_ms']:>6.1f}x | "
              f"{row['jagged_mb']:>5.0f}/{row['padded_fixed_mb']:>5.0f}/{row['padded_batch_mb']:>5.0f} | "
              f"{row['gflops']:>7.1f} {row['matmul_gflops']:>7.1f} "
              f"{100 * row['gflops'] / row['matmul_gflops']:>3.0f}%")

    if args.dists != list(CAPS):
        return
    # Scaling of our time with N (B fixed, mean length varied) and with B (mean 20 fixed).
    scaling = {"N": [], "B": []}
    for mean in (5, 10, 20, 40, 80):
        lengths = np.full(B, mean, dtype=np.int64)
        ms = time_it(step_fn(attn, "jagged", make_inputs(lengths, "jagged", mean)), repeats) * 1e3
        scaling["N"].append((int(lengths.sum()), ms))
    for b in (128, 256, 512, 1024, 2048):
        lengths = np.full(b, 20, dtype=np.int64)
        ms = time_it(step_fn(attn, "jagged", make_inputs(lengths, "jagged", 20)), repeats) * 1e3
        scaling["B"].append((b, ms))
    print("\nour time vs total behaviours N (B=1024):  "
          + ", ".join(f"N={n}: {ms:.1f} ms ({ms / n * 1e6:.0f} ns/behaviour)" for n, ms in scaling["N"]))
    print("our time vs batch size B (20 behaviours each): "
          + ", ".join(f"B={b}: {ms:.1f} ms" for b, ms in scaling["B"]))
    results["scaling"] = scaling
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(HERE, "attention_scaling.png"))
    print(f"\nwrote {args.json} and {os.path.join(HERE, 'attention_scaling.png')}")


def plot(results: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    dists = ["movielens", "lognormal20", "long200"]
    x = np.arange(len(dists))
    for k, (impl, label) in enumerate([("jagged", "jagged (ours)"),
                                       ("padded_batch", "padded to batch max"),
                                       ("padded_fixed", "padded to fixed max")]):
        axes[0].bar(x + (k - 1) * 0.27, [results[d][f"{impl}_ms"] for d in dists], 0.27,
                    label=label)
    axes[0].set_xticks(x, dists)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("forward + backward, ms (log)")
    axes[0].set_title(f"DIN attention, B={B}, D={D}")
    axes[0].legend()
    n, ms = zip(*results["scaling"]["N"])
    axes[1].plot(n, ms, marker="o")
    axes[1].set_xlabel("total behaviours N (B = 1024)")
    axes[1].set_ylabel("ms")
    axes[1].set_title("ours: time vs total behaviours N")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
