"""Streaming Parquet input at scale: throughput and peak memory as the data set grows.

Generates synthetic Parquet data sets (default 2M and 20M samples: histories lognormal,
mean 10 behaviours, item + category lists, a pooled user id; 64k-row row groups, 2M rows a
file) under --data-dir, then, in a fresh process per size so peak RSS is that size's alone:

1. trains DIN (the package's model and training step, one process) for --train-steps
   batches read from the stream, reporting training samples/s;
2. streams the rest of the epoch through the loader (read, check, batch; no model),
   reporting loader samples/s;

and prints peak RSS (the process and its DataLoader workers) next to the data size. The
claim under test: memory stays flat however large the files are, because only a window of
--buffer-rows rows per worker is ever held.

    python benchmarks/streaming.py                      # 2M and 20M samples
    python benchmarks/streaming.py --sizes 200000 2000000 --train-steps 50   # quick
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List

import numpy as np

VOCAB = {"item": 200_000, "cate": 1_000, "user": 100_000}
ROW_GROUP = 65_536
FILE_ROWS = 2_000_000


def generate(folder: str, samples: int, seed: int = 0) -> List[str]:
    """Write ``samples`` rows as Parquet files of FILE_ROWS rows (skips existing files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    files = []
    for f, start in enumerate(range(0, samples, FILE_ROWS)):
        path = os.path.join(folder, f"part-{f:04d}.parquet")
        files.append(path)
        if os.path.exists(path):
            continue
        rng = np.random.default_rng([seed, f])
        with pq.ParquetWriter(path + ".part", _schema()) as writer:
            for lo in range(start, min(start + FILE_ROWS, samples), ROW_GROUP):
                n = min(ROW_GROUP, start + FILE_ROWS - lo, samples - lo)
                lengths = np.minimum(rng.lognormal(np.log(10) - 0.5, 1.0, n).astype(np.int64),
                                     200)
                offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
                hist = rng.integers(0, VOCAB["item"], int(lengths.sum()), dtype=np.int32)
                item = rng.integers(0, VOCAB["item"], n, dtype=np.int32)
                writer.write_table(pa.table({
                    "item": item, "cate": item % VOCAB["cate"],
                    "hist_item": pa.ListArray.from_arrays(offsets, pa.array(hist)),
                    "hist_cate": pa.ListArray.from_arrays(offsets,
                                                          pa.array(hist % VOCAB["cate"])),
                    "user": rng.integers(0, VOCAB["user"], n, dtype=np.int32),
                    "label": (rng.random(n) < 0.3).astype(np.int8),
                }, schema=_schema()), row_group_size=ROW_GROUP)
        os.replace(path + ".part", path)
    return files


def _schema():  # noqa: ANN202
    import pyarrow as pa

    ids = pa.int32()
    return pa.schema([("item", ids), ("cate", ids), ("hist_item", pa.list_(ids)),
                      ("hist_cate", pa.list_(ids)), ("user", ids), ("label", pa.int8())])


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux; children = DataLoader workers that have exited.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def child(args: argparse.Namespace) -> Dict[str, Any]:
    """One size, measured in this (fresh) process."""
    import torch
    from torch.utils.data import DataLoader

    from torchrec_din.data.loader import _identity
    from torchrec_din.data.parquet import ParquetDataset, ParquetSplit
    from torchrec_din.data.schema import FeatureSchema
    from torchrec_din.models import DINTrain
    from torchrec_din.build import build_model
    from torchrec_din.config import load_config

    torch.set_num_threads(args.threads)
    config = load_config("configs/synthetic_din.yaml", [
        "features.pooled=[user]", "model.validate_inputs=false",
        *[f"tables.{t}.num_embeddings={n}" for t, n in VOCAB.items()]])
    schema = FeatureSchema.from_config(config["features"])
    split = ParquetSplit([os.path.join(args.folder, "*.parquet")], schema, "train")
    dataset = ParquetDataset(split, VOCAB, args.batch_size, True, seed=0,
                             buffer_rows=args.buffer_rows)
    loader = DataLoader(dataset, batch_size=None, num_workers=args.workers,
                        collate_fn=_identity)
    model = DINTrain(build_model(VOCAB, config))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    it = iter(loader)
    samples, start = 0, time.perf_counter()
    for _ in range(args.train_steps):
        batch = next(it)
        loss, _ = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        samples += batch.labels.numel()
    train_time = time.perf_counter() - start
    rss_after_training = _peak_rss_mb()
    streamed, start = 0, time.perf_counter()
    for batch in it:
        streamed += batch.labels.numel()
    stream_time = time.perf_counter() - start
    return {"samples": split.num_rows, "row_groups": len(split.units),
            "files": len(split.files),
            "bytes_on_disk": sum(os.path.getsize(f) for f in split.files),
            "train_steps": args.train_steps, "train_samples_per_sec": samples / train_time,
            "streamed_samples": streamed + samples,
            "loader_samples_per_sec": streamed / max(stream_time, 1e-9),
            "stream_seconds": stream_time, "peak_rss_mb_after_training": rss_after_training,
            "peak_rss_mb": _peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--data-dir", default=".cache/streaming_bench")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--buffer-rows", type=int, default=65_536)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/streaming_results.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = []
    for size in args.sizes:
        folder = os.path.join(args.data_dir, f"{size}")
        start = time.perf_counter()
        generate(folder, size)
        print(f"[data] {size:,} samples in {folder} ({time.perf_counter() - start:.0f} s)",
              flush=True)
        cmd = [sys.executable, __file__, "--child", "--folder", folder,
               "--batch-size", str(args.batch_size), "--buffer-rows", str(args.buffer_rows),
               "--workers", str(args.workers), "--threads", str(args.threads),
               "--train-steps", str(args.train_steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"[run] {json.dumps(result)}", flush=True)
    header = ("| samples | on disk | train samples/s | loader samples/s | epoch streamed in "
              "| peak RSS |")
    print("\n" + header + "\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['samples']:,} | {r['bytes_on_disk'] / 2**30:.2f} GiB | "
              f"{r['train_samples_per_sec']:,.0f} | {r['loader_samples_per_sec']:,.0f} | "
              f"{r['stream_seconds']:.0f} s | {r['peak_rss_mb']:,.0f} MB |")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"\n{b['samples'] / a['samples']:.0f}x the data: peak RSS x"
              f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}, training samples/s x"
              f"{b['train_samples_per_sec'] / a['train_samples_per_sec']:.2f}, loader "
              f"samples/s x{b['loader_samples_per_sec'] / a['loader_samples_per_sec']:.2f}")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("child", "folder")},
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
