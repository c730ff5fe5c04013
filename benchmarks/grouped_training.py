"""Training throughput on shared histories vs one row per sample (MovieLens-100k next_item).

The same training samples (each positive with its negative) as batches of 256 samples: one
row per sample, or 128 histories with K = 2 candidates each (``data.group_histories``).
Times forward + backward + Adam of the default DIN config on identical sample sets,
interleaved, and prints medians of samples/s and the ratio. Batch building (the loader) is
timed separately, since grouping also halves the history ids a batch carries.

Run:
    .venv/bin/python benchmarks/grouped_training.py
"""

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from attention import add_malloc_flag, apply_malloc  # benchmarks/attention.py
from torchrec_din import DINTrain
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.loader import DINDataset
from torchrec_din.data.movielens import load_movielens_100k
from torchrec_din.build import build_model
from torchrec_din.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default="configs/movielens_din.yaml")
    add_malloc_flag(parser)
    args = parser.parse_args()
    malloc = apply_malloc(args)
    config = load_config(args.config, ["data.protocol=next_item", "data.valid_per_user=5",
                                       "data.test_per_user=5"])
    data = config["data"]
    table = load_movielens_100k(cache_dir=data["cache_dir"], protocol="next_item",
                                valid_per_user=5, test_per_user=5).with_max_history(
                                    data["max_history"])
    pooled = FeatureSchema.from_config(config["features"])
    grouped_ds = DINDataset(table, "train", pooled, group_histories=True)
    flat_ds = DINDataset(table, "all", pooled)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(grouped_ds))
    grouped, flat = [], []
    build = {"grouped": 0.0, "flat": 0.0}
    for step in range(args.steps):
        positions = order[step * 128:(step + 1) * 128]
        starts = grouped_ds.group_offsets[positions]
        ends = grouped_ds.group_offsets[positions + 1]
        samples = np.concatenate([grouped_ds.rows[s:e] for s, e in zip(starts, ends)])
        t = time.perf_counter()
        grouped.append(grouped_ds[positions])
        build["grouped"] += time.perf_counter() - t
        t = time.perf_counter()
        flat.append(flat_ds[samples])
        build["flat"] += time.perf_counter() - t
    n_samples = sum(b.batch_size for b in flat)
    torch.manual_seed(0)
    model = build_model(table.vocab, config)
    runs = {"grouped": (DINTrain(copy.deepcopy(model), grouped=True), grouped),
            "flat": (DINTrain(copy.deepcopy(model)), flat)}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, (m, _) in runs.items()}
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, (train_model, batches) in runs.items():
            start = time.perf_counter()
            for batch in batches:
                loss, _ = train_model(batch)
                opts[name].zero_grad()
                loss.backward()
                opts[name].step()
            times[name].append(time.perf_counter() - start)
    speed = {k: n_samples / statistics.median(v) for k, v in times.items()}
    print(f"MovieLens-100k next_item, {args.steps} steps of 256 samples ({n_samples} samples), "
          f"{torch.get_num_threads()} threads, {malloc}, medians of {args.repeats}")
    print(f"one row per sample : {speed['flat']:8.0f} samples/s   batch building "
          f"{build['flat'] / args.steps * 1e3:.2f} ms/batch")
    print(f"shared histories   : {speed['grouped']:8.0f} samples/s   batch building "
          f"{build['grouped'] / args.steps * 1e3:.2f} ms/batch")
    print(f"ratio              : {speed['grouped'] / speed['flat']:.2f}x training step, "
          f"{build['flat'] / max(build['grouped'], 1e-9):.2f}x batch building")


if __name__ == "__main__":
    main()
