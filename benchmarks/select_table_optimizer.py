"""Re-select the tables' learning rate for the default MovieLens recipe, on validation only.

Training now updates the embedding tables with FBGEMM's fused row-wise Adagrad in one process
as on N (it was dense Adam in one process). The rule, fixed before any run: candidates are
``train.embedding_learning_rate`` in {0.02, 0.05, 0.1} (the dense part keeps Adam at 0.001,
the rest of the default config unchanged); the winner has the highest validation GAUC, mean
of seeds 0-2, `rating` protocol; a candidate within 0.001 of the best loses to 0.05 (FBGEMM's
and our sharded runs' earlier default). Test metrics are printed, never used to choose.

Run:
    .venv/bin/python benchmarks/select_table_optimizer.py --output benchmarks/results_table_optimizer.md
"""

import argparse
import os
import statistics
from typing import Dict, List

from movielens_results import emit_table, train_or_reuse  # benchmarks/movielens_results.py

CONFIG = "configs/movielens_din.yaml"
TIE = 0.001
PREFERRED = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/select_table_optimizer")
    parser.add_argument("--output", default=None, help="Markdown file for the table")
    args = parser.parse_args()
    valid: Dict[float, List[float]] = {}
    lines = ["| tables: rowwise_adagrad lr | valid GAUC (mean ± sd) | per seed | epochs | "
             "test GAUC (not used) |", "|---|---|---|---|---|"]
    for lr in args.learning_rates:
        runs = [train_or_reuse(CONFIG, [f"seed={seed}", "train.progress=false",
                                        "train.embedding_optimizer=rowwise_adagrad",
                                        f"train.embedding_learning_rate={lr}"],
                               os.path.join(args.runs_dir, f"lr{lr:g}_seed{seed}"))
                for seed in args.seeds]
        best = [r["epochs"][r["best_epoch"]]["valid"]["gauc"] for r in runs]
        valid[lr] = best
        lines.append(f"| {lr:g} | {statistics.mean(best):.4f} ± {statistics.stdev(best):.4f} | "
                     f"{', '.join(f'{v:.4f}' for v in best)} | "
                     f"{[len(r['epochs']) for r in runs]} | "
                     f"{statistics.mean(r['test']['gauc'] for r in runs):.4f} |")
    top = max(valid, key=lambda lr: statistics.mean(valid[lr]))
    if PREFERRED in valid and (statistics.mean(valid[top])
                               - statistics.mean(valid[PREFERRED])) <= TIE:
        top = PREFERRED
    lines += ["", f"Chosen on validation GAUC (seeds {args.seeds}, `rating`): "
                  f"train.embedding_learning_rate={top:g}"]
    emit_table(lines, args.output)


if __name__ == "__main__":
    main()
