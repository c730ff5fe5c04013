"""Choose the default DIN configuration by a small sweep, selected on validation GAUC only.

Grid (MovieLens-100k, the README's `rating` protocol, seed 0): the attention unit (the
paper's sigmoid unit with a PReLU over arch, or Dice in both) x learning rate x embedding
dim, every run with early stopping (``train.patience``) under an epoch cap. The table shows
each run's best validation GAUC, its epoch and how many epochs ran; the winner is the highest
validation GAUC. Test metrics are never read here.

Run:
    .venv/bin/python benchmarks/sweep_defaults.py --output benchmarks/results_sweep.md
"""

import argparse
import itertools
import os
from typing import Any, Dict, List

from movielens_results import emit_table, train_or_reuse  # benchmarks/movielens_results.py

UNITS = {
    "sigmoid (paper)": ["model.attention_activation=sigmoid", "model.over_arch_activation=prelu"],
    "dice": ["model.attention_activation=dice", "model.over_arch_activation=dice"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[0.001, 0.003])
    parser.add_argument("--embedding-dims", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--epochs", type=int, default=15, help="the epoch cap")
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default="runs/sweep")
    parser.add_argument("--output", default=None, help="Markdown file for the table")
    args = parser.parse_args()

    rows: List[Dict[str, Any]] = []
    for unit, lr, dim in itertools.product(UNITS, args.learning_rates, args.embedding_dims):
        name = f"{unit.split()[0]}-lr{lr:g}-d{dim}"
        overrides = UNITS[unit] + [
            f"seed={args.seed}", f"train.learning_rate={lr}", f"model.embedding_dim={dim}",
            f"train.epochs={args.epochs}", f"train.patience={args.patience}",
            "train.progress=false"]
        metrics = train_or_reuse("configs/movielens_din.yaml", overrides,
                                 os.path.join(args.runs_dir, name))
        best = metrics["best_epoch"]
        valid = next(e["valid"] for e in metrics["epochs"] if e["epoch"] == best)
        rows.append({"unit": unit, "lr": lr, "dim": dim, "gauc": valid["gauc"],
                     "auc": valid["auc"], "best_epoch": best,
                     "epochs_run": len(metrics["epochs"])})
        print(f"[sweep] {name}: valid GAUC {valid['gauc']:.4f} at epoch {best}", flush=True)

    winner = max(rows, key=lambda r: r["gauc"])
    lines = [f"MovieLens-100k, protocol `rating`, seed {args.seed}, epoch cap {args.epochs}, "
             f"patience {args.patience}; selected on validation GAUC",
             "", "| attention unit | learning rate | embedding dim | valid GAUC | valid AUC | "
             "best epoch | epochs run |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["gauc"]):
        mark = " **(chosen)**" if r is winner else ""
        lines.append(f"| {r['unit']}{mark} | {r['lr']:g} | {r['dim']} | {r['gauc']:.4f} | "
                     f"{r['auc']:.4f} | {r['best_epoch']} | {r['epochs_run']} |")
    emit_table(lines, args.output)


if __name__ == "__main__":
    main()
