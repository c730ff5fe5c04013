"""glibc's default malloc vs ``torchrec_din.allocator.keep_freed_memory()``, side by side.

Each setting runs in its own child process (a malloc setting cannot be undone), the two
alternating for ``--rounds`` rounds; the table shows medians over rounds. Measured in each
child, with medians of ``--repeats``:

* the attention alone, forward + backward (B = 1,024 histories, D = 128, MLP (80, 40),
  sigmoid: the configuration of benchmarks/attention.py), ns per behaviour at N = 5k..160k,
  and a plain [N, 256] x [256, 80] product (forward + backward) in the same process;
* a whole training step (forward, backward, Adam) of the default DIN config on
  MovieLens-100k ``rating`` batches of 256 and 2,048 samples;
* serving: the DINScorer at K = 1,000 candidates against one history of ~50 behaviours;
* the process's peak resident memory.

Run:
    .venv/bin/python benchmarks/allocator.py
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = ("default", "keep")


def _child(setting: str, sizes: List[int], repeats: int) -> Dict[str, Any]:
    if setting == "keep":
        from torchrec_din.allocator import keep_freed_memory

        assert keep_freed_memory(), "glibc did not take the malloc settings"
    import numpy as np
    import torch
    from torchrec.sparse.jagged_tensor import JaggedTensor

    from attention import D, HIDDEN, time_it  # benchmarks/attention.py
    from serving import requests, scorer_inputs, VOCAB  # benchmarks/serving.py
    from torchrec_din import DINTrain, JaggedTargetAttention
    from torchrec_din.data.loader import DINDataset
    from torchrec_din.data.schema import FeatureSchema
    from torchrec_din.serve import DINScorer
    from torchrec_din.build import build_model
    from torchrec_din.data.registry import build_table
    from torchrec_din.config import load_config

    out: Dict[str, Any] = {"attention_ns": {}, "matmul_ns": {}}
    torch.manual_seed(0)
    attn = JaggedTargetAttention(D, list(HIDDEN), validate_inputs=False)
    b = 1024
    for n in sizes:
        lengths = torch.full((b,), n // b, dtype=torch.long)
        query = torch.randn(b, D, requires_grad=True)
        keys = torch.randn(n, D, requires_grad=True)
        a = torch.randn(n, 2 * D, requires_grad=True)
        w = torch.randn(2 * D, HIDDEN[0], requires_grad=True)
        whole = time_it(lambda: attn(query, JaggedTensor(values=keys, lengths=lengths)).sum()
                        .backward(), repeats)
        matmul = time_it(lambda: (a @ w).sum().backward(), repeats)
        out["attention_ns"][n] = whole / n * 1e9
        out["matmul_ns"][n] = matmul / n * 1e9
        del query, keys, a, w

    config = load_config("configs/movielens_din.yaml", ["train.progress=false"])
    table = build_table(config["data"], int(config["seed"]))
    dataset = DINDataset(table, "train", FeatureSchema.from_config(config["features"]))
    order = np.random.default_rng(0).permutation(len(dataset))
    for batch_size in (256, 2048):
        torch.manual_seed(0)
        model = DINTrain(build_model(table.vocab, config))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [dataset[order[i * batch_size:(i + 1) * batch_size]] for i in range(8)]

        def steps() -> None:
            for batch in batches:
                loss, _ = model(batch)
                opt.zero_grad()
                loss.backward()
                opt.step()

        out[f"step_ms_{batch_size}"] = time_it(steps, repeats) / len(batches) * 1e3

    scorer = DINScorer(build_model(VOCAB, config).eval()).eval()
    inputs = scorer_inputs(requests(1, 1000, 50, seed=1000))
    with torch.no_grad():
        out["serving_cand_s"] = 1000 / time_it(lambda: scorer(*inputs), repeats)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[5_120, 20_480, 40_960, 81_920, 163_840])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, HERE)  # benchmarks/attention.py and serving.py, in parent and children
    if args.child:
        print(json.dumps(_child(args.child, args.sizes, args.repeats)))
        return
    from attention import D, executed_flops, HIDDEN  # benchmarks/attention.py

    runs: Dict[str, List[Dict[str, Any]]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for setting in SETTINGS:
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--child", setting, "--repeats", str(args.repeats),
                 "--sizes", *map(str, args.sizes)], capture_output=True, text=True,
                check=False)
            if proc.returncode != 0:
                sys.exit(f"{setting} child failed:\n{proc.stderr[-3000:]}")
            runs[setting].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}, {setting}: {time.perf_counter() - start:.0f} s", flush=True)

    def med(setting: str, *keys: str) -> float:
        values = []
        for run in runs[setting]:
            v: Any = run
            for k in keys:
                v = v[k]
            values.append(float(v))
        return statistics.median(values)

    print(f"\nmedians over {args.rounds} rounds (each a median of {args.repeats})\n")
    print("| N | default ns/behaviour | keep ns/behaviour | keep vs default | default % of "
          "matmul | keep % of matmul |")
    print("|---|---|---|---|---|---|")
    for n in map(str, args.sizes):
        d, k = med("default", "attention_ns", n), med("keep", "attention_ns", n)
        # Attention FLOPs per behaviour / matmul FLOPs per behaviour, as in attention.py.
        ratio_flops = executed_flops(int(n), 1024) / (3 * 2 * int(n) * 2 * D * HIDDEN[0])
        md, mk = med("default", "matmul_ns", n), med("keep", "matmul_ns", n)
        print(f"| {int(n):,} | {d:,.0f} | {k:,.0f} | {d / k:.2f}x | "
              f"{ratio_flops * md / d:.0%} | {ratio_flops * mk / k:.0%} |")
    first, last = map(str, (args.sizes[0], args.sizes[-1]))
    for s in SETTINGS:
        print(f"{s}: ns per behaviour at N={int(last):,} / at N={int(first):,} = "
              f"{med(s, 'attention_ns', last) / med(s, 'attention_ns', first):.2f}")
    print("\n| | default | keep | keep vs default |\n|---|---|---|---|")
    for key, label, higher in (("step_ms_256", "training step, B = 256 (ms)", False),
                               ("step_ms_2048", "training step, B = 2,048 (ms)", False),
                               ("serving_cand_s", "serving K = 1,000 (candidates/s)", True),
                               ("peak_rss_mb", "peak RSS (MB)", False)):
        d, k = med("default", key), med("keep", key)
        if key == "peak_rss_mb":  # not a speed: how much more memory keep holds
            print(f"| {label} | {d:,.0f} | {k:,.0f} | {k / d:.2f}x the memory |")
            continue
        gain = k / d if higher else d / k
        print(f"| {label} | {d:,.1f} | {k:,.1f} | {gain:.2f}x faster |")


if __name__ == "__main__":
    main()
