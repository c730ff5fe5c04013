"""Whole runs on shared histories vs one row per sample: MovieLens-100k, ``next_item``.

Trains the default DIN (configs/movielens_din.yaml, protocol next_item: every positive with
one negative against the same history) for several seeds, once with
``data.group_histories=false`` and once with ``true``, through the CLI's code path, and
prints test metrics (mean +- std over seeds), the per-seed differences and training
samples/s. Finished runs in --runs-dir are reused.

    .venv/bin/python benchmarks/grouped_runs.py --seeds 0 1 2 --output benchmarks/results_grouped_runs.md
"""

import argparse
import os
import statistics
from typing import Dict, List

from movielens_results import _fmt, emit_table, train_or_reuse

VARIANTS = {"one row per sample": "false", "shared histories": "true"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/grouped_runs")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    runs: Dict[str, List[Dict]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name, flag in VARIANTS.items():
            metrics = train_or_reuse("configs/movielens_din.yaml", [
                f"seed={seed}", "data.protocol=next_item", "data.valid_per_user=5",
                "data.test_per_user=5", f"data.group_histories={flag}",
                "train.progress=false"], os.path.join(args.runs_dir, f"{flag}-seed{seed}"))
            runs[name].append({**metrics["test"], "epochs": len(metrics["epochs"])})
    lines = [f"MovieLens-100k `next_item`, default DIN config, seeds {args.seeds}", "",
             "| training form | test AUC | test GAUC | logloss | train samples/s (median "
             "epoch) | epochs |", "|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        lines.append(f"| {name} | {_fmt([r['auc'] for r in rs])} | "
                     f"{_fmt([r['gauc'] for r in rs])} | {_fmt([r['logloss'] for r in rs])} | "
                     f"{_fmt([r['train_samples_per_sec'] for r in rs], 0)} | "
                     f"{[r['epochs'] for r in rs]} |")
    flat, grouped = runs["one row per sample"], runs["shared histories"]
    diffs = [g["gauc"] - f["gauc"] for f, g in zip(flat, grouped)]
    speed = statistics.mean(g["train_samples_per_sec"] / f["train_samples_per_sec"]
                            for f, g in zip(flat, grouped))
    se = statistics.mean(r["gauc_se"] for r in flat)
    lines += ["", f"GAUC, shared minus one row, per seed: {[round(d, 4) for d in diffs]} "
                  f"(bootstrap standard error of one test evaluation: {se:.4f}); training "
                  f"samples/s ratio (shared / one row), mean over seeds: {speed:.2f}x"]
    emit_table(lines, args.output)


if __name__ == "__main__":
    main()
