"""Peak memory of Parquet streaming follows ``buffer_rows``, not the writer's row-group size.

Writes one synthetic data set twice, once with a few huge row groups and once with small
ones (default 606k rows: 303k-row groups vs 1,024-row groups; histories lognormal, mean 20,
item + category lists, a pooled user id), then streams one epoch of each through
``ParquetDataset`` (read, check, batch; no model) with the same ``--buffer-rows``, each in a
fresh process so its peak RSS is its own. Prints peak RSS above the process's RSS after
imports, per row-group size, side by side, with the ratio (median of ``--repeats`` runs).

    python benchmarks/row_group_memory.py
    python benchmarks/row_group_memory.py --rows 200000 --row-groups 100000 1024 --repeats 1
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


def generate(path: str, rows: int, row_group: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(path):
        return
    rng = np.random.default_rng(seed)  # the same rows for every row-group size
    lengths = np.minimum(rng.lognormal(np.log(20) - 0.5, 1.0, rows).astype(np.int64), 400)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    hist = rng.integers(0, VOCAB["item"], int(lengths.sum()), dtype=np.int64)
    item = rng.integers(0, VOCAB["item"], rows, dtype=np.int64)
    table = pa.table({
        "item": item, "cate": item % VOCAB["cate"],
        "hist_item": pa.ListArray.from_arrays(offsets, pa.array(hist)),
        "hist_cate": pa.ListArray.from_arrays(offsets, pa.array(hist % VOCAB["cate"])),
        "user": rng.integers(0, VOCAB["user"], rows), "label": rng.integers(0, 2, rows)})
    pq.write_table(table, path + ".part", row_group_size=row_group)
    os.replace(path + ".part", path)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def child(path: str, buffer_rows: int, batch_size: int) -> Dict[str, Any]:
    from torchrec_din.data.parquet import ParquetDataset, ParquetSplit
    from torchrec_din.data.schema import FeatureSchema
    from torchrec_din.config import load_config

    config = load_config("configs/synthetic_din.yaml", ["features.pooled=[user]"])
    schema = FeatureSchema.from_config(config["features"])
    split = ParquetSplit([path], schema, "train")
    base = _rss_mb()
    ds = ParquetDataset(split, VOCAB, batch_size, True, seed=0, buffer_rows=buffer_rows)
    start, n = time.perf_counter(), 0
    for batch in ds:
        n += batch.labels.numel()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"rows": n, "row_groups": len(split.units), "seconds": time.perf_counter() - start,
            "rss_after_imports_mb": base, "peak_above_imports_mb": peak - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=606_000)
    parser.add_argument("--row-groups", type=int, nargs="+", default=[303_000, 1_024])
    parser.add_argument("--buffer-rows", type=int, default=1_024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=".cache/row_group_bench")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.buffer_rows, args.batch_size)))
        return
    os.makedirs(args.data_dir, exist_ok=True)
    results: Dict[int, List[Dict[str, Any]]] = {}
    for rg in args.row_groups:
        path = os.path.join(args.data_dir, f"rows{args.rows}-rg{rg}.parquet")
        generate(path, args.rows, rg)
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        for rg in args.row_groups:
            path = os.path.join(args.data_dir, f"rows{args.rows}-rg{rg}.parquet")
            out = subprocess.run([sys.executable, __file__, "--child", path, "--buffer-rows",
                                  str(args.buffer_rows), "--batch-size", str(args.batch_size)],
                                 capture_output=True, text=True, check=True)
            results.setdefault(rg, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.rows:,} rows, buffer_rows {args.buffer_rows:,}, batch {args.batch_size}, "
          f"median of {args.repeats} fresh processes\n")
    print("| row-group rows | row groups | peak RSS above imports | epoch seconds |")
    print("|---|---|---|---|")
    peaks = []
    for rg, runs in results.items():
        peak = float(np.median([r["peak_above_imports_mb"] for r in runs]))
        peaks.append(peak)
        print(f"| {rg:,} | {runs[0]['row_groups']} | {peak:,.0f} MB | "
              f"{np.median([r['seconds'] for r in runs]):.1f} |")
    print(f"\npeak ratio (first / last row-group size): {peaks[0] / max(peaks[-1], 1e-9):.2f}")


if __name__ == "__main__":
    main()
