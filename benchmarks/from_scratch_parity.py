"""From-scratch parity: the default MovieLens config on one process and on 2 torchrun ranks.

Each run starts from nothing (2 ranks: the model built on the meta device and materialised by
DistributedModelParallel, as the README's torchrun command does), so a broken start shows here
where an equality test given one shared state cannot see it. Both go through the CLI exactly
as a user types it. Prints, per seed, test AUC / GAUC of both and their difference, the
epochs each trained, and writes the table to ``--output``. Finished runs are reused.

Run:
    .venv/bin/python benchmarks/from_scratch_parity.py --seeds 0 1 2
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List

from movielens_results import finished_metrics  # benchmarks/movielens_results.py

CONFIG = "configs/movielens_din.yaml"
TARGET = 0.005  # |test GAUC (2 ranks) - test GAUC (1 process)| on the same seed


def run(out: str, seed: int, ranks: int, extra: List[str]) -> Dict:
    """metrics.json of a finished run in ``out``, else train it from scratch there."""
    metrics = finished_metrics(out)
    if metrics is not None:
        return metrics
    shutil.rmtree(out, ignore_errors=True)
    args = ["train", "--config", CONFIG, "--output-dir", out, "--set", f"seed={seed}",
            "--set", "train.progress=false"]
    for item in extra:
        args += ["--set", item]
    if ranks == 1:
        cmd = [sys.executable, "-m", "torchrec_din", *args]
        env = dict(os.environ)
    else:
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(ranks), "-m", "torchrec_din",
               *args]
        # Two ranks on two cores: one thread each, so they do not fight over the cores.
        env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  {out}: {time.perf_counter() - start:.0f} s", flush=True)
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/from_scratch_parity")
    parser.add_argument("--output", default=None, help="also write the table here (Markdown)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for both runs (repeatable)")
    args = parser.parse_args()
    rows: List[str] = [
        f"`{CONFIG}`, 1 process vs `torchrun --nproc_per_node 2`, each from scratch",
        "",
        "| seed | 1 process: test AUC | GAUC | epochs | 2 ranks: test AUC | GAUC | epochs "
        "| GAUC difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    diffs: List[float] = []
    for seed in args.seeds:
        one = run(os.path.join(args.runs_dir, f"seed{seed}_1proc"), seed, 1, args.overrides)
        two = run(os.path.join(args.runs_dir, f"seed{seed}_2ranks"), seed, 2, args.overrides)
        diff = two["test"]["gauc"] - one["test"]["gauc"]
        diffs.append(diff)
        rows.append(f"| {seed} | {one['test']['auc']:.4f} | {one['test']['gauc']:.4f} | "
                    f"{len(one['epochs'])} | {two['test']['auc']:.4f} | "
                    f"{two['test']['gauc']:.4f} | {len(two['epochs'])} | {diff:+.4f} |")
    worst = max(abs(d) for d in diffs)
    rows += ["", f"Mean GAUC difference {statistics.mean(diffs):+.4f}, largest |difference| "
                 f"{worst:.4f} (target: within {TARGET} on every seed: "
                 f"{'met' if worst <= TARGET else 'MISSED'})."]
    text = "\n".join(rows)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
