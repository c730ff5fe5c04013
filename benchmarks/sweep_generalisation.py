"""Training recipes against id overfitting, chosen on validation only, on data whose best
possible AUC is known (the planted synthetic set) and on MovieLens-100k.

Each recipe is a set of config overrides applied on top of a config (default: the shipped
``configs/synthetic_din.yaml``), trained with early stopping on validation GAUC. The table
lists, per recipe, the validation AUC / GAUC of the best epoch (what selects the winner) and,
on planted data, the share of the possible lift over 0.5 on validation. Test metrics are read
only for the winner, after the choice, with ``--report-test``.

    .venv/bin/python benchmarks/sweep_generalisation.py --output benchmarks/results_generalisation.md
    .venv/bin/python benchmarks/sweep_generalisation.py --config configs/movielens_din.yaml \\
        --recipes baseline mba_1 --seeds 0 1 2
"""

import argparse
import os
import statistics
from typing import Any, Dict, List

from movielens_results import emit_table, train_or_reuse  # benchmarks/movielens_results.py

STOP = ["train.epochs=20", "train.patience=2", "train.progress=false"]
RECIPES: Dict[str, List[str]] = {
    "baseline": [],
    "mba_1": ["train.regularization=mba", "train.l2_lambda=1.0"],
    "mba_10": ["train.regularization=mba", "train.l2_lambda=10.0"],
    "mba_30": ["train.regularization=mba", "train.l2_lambda=30.0"],
    "mba_100": ["train.regularization=mba", "train.l2_lambda=100.0"],
    "mba_30_dice": ["train.regularization=mba", "train.l2_lambda=30.0",
                    "model.attention_activation=dice", "model.over_arch_activation=dice"],
    "l2_1e-5": ["train.regularization=l2", "train.l2_lambda=1e-5"],
    "dim_8": ["model.embedding_dim=8", "model.pooled_embedding_dim=8"],
    "dropout_0.3": ["model.dropout=0.3"],
    "lr_0.003": ["train.learning_rate=0.003"],
    "batch_1024": ["train.batch_size=1024"],
    "dice": ["model.attention_activation=dice", "model.over_arch_activation=dice"],
    # Second round, around the first round's winner (mba_10):
    "mba_3": ["train.regularization=mba", "train.l2_lambda=3.0"],
    "mba_10_softmax": ["train.regularization=mba", "train.l2_lambda=10.0",
                       "model.attention_normalization=softmax"],
    "mba_10_dice": ["train.regularization=mba", "train.l2_lambda=10.0",
                    "model.attention_activation=dice", "model.over_arch_activation=dice"],
    "mba_10_dim_32": ["train.regularization=mba", "train.l2_lambda=10.0",
                      "model.embedding_dim=32"],
    "mba_10_lr_0.003": ["train.regularization=mba", "train.l2_lambda=10.0",
                        "train.learning_rate=0.003"],
    "mba_10_batch_1024": ["train.regularization=mba", "train.l2_lambda=10.0",
                          "train.batch_size=1024"],
    # Third round: softmax normalisation (the weighted mean of the history) with MBA.
    "softmax": ["model.attention_normalization=softmax"],
    "mba_3_softmax": ["train.regularization=mba", "train.l2_lambda=3.0",
                      "model.attention_normalization=softmax"],
    "mba_30_softmax": ["train.regularization=mba", "train.l2_lambda=30.0",
                       "model.attention_normalization=softmax"],
    "mba_10_softmax_dice": ["train.regularization=mba", "train.l2_lambda=10.0",
                            "model.attention_normalization=softmax",
                            "model.attention_activation=dice", "model.over_arch_activation=dice"],
    # Fourth round, on 10,000 users (where the shipped mba_3_softmax stops at epoch 0-1):
    # less regularisation for more data, a wider embedding, a slower or larger-batch descent.
    "mba_1_softmax": ["train.regularization=mba", "train.l2_lambda=1.0",
                      "model.attention_normalization=softmax"],
    "mba_3_softmax_dim_32": ["train.regularization=mba", "train.l2_lambda=3.0",
                             "model.attention_normalization=softmax", "model.embedding_dim=32"],
    "mba_3_softmax_lr_0.0003": ["train.regularization=mba", "train.l2_lambda=3.0",
                                "model.attention_normalization=softmax",
                                "train.learning_rate=0.0003"],
    "mba_3_softmax_batch_1024": ["train.regularization=mba", "train.l2_lambda=3.0",
                                 "model.attention_normalization=softmax",
                                 "train.batch_size=1024"],
    # Fifth round, 10,000 users, around batches of 1,024: a learning rate raised with the
    # batch, and lambda 1 with it.
    "mba_3_softmax_batch_1024_lr_0.002": ["train.regularization=mba", "train.l2_lambda=3.0",
                                          "model.attention_normalization=softmax",
                                          "train.batch_size=1024", "train.learning_rate=0.002"],
    "mba_1_softmax_batch_1024": ["train.regularization=mba", "train.l2_lambda=1.0",
                                 "model.attention_normalization=softmax",
                                 "train.batch_size=1024"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/synthetic_din.yaml")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], help="extra overrides for all")
    parser.add_argument("--runs-dir", default="runs/sweep_generalisation")
    parser.add_argument("--report-test", action="store_true",
                        help="after choosing on validation, print the winner's test metrics")
    parser.add_argument("--output", default=None)
    parser.add_argument("--select", choices=["gauc", "auc"], default="gauc",
                        help="the validation metric (mean over seeds) that picks the winner")
    args = parser.parse_args()
    name = os.path.splitext(os.path.basename(args.config))[0]
    rows: List[Dict[str, Any]] = []
    for recipe in args.recipes:
        valid_auc, valid_gauc, share, epochs, tests = [], [], [], [], []
        for seed in args.seeds:
            out = os.path.join(args.runs_dir, f"{name}-{recipe}-s{seed}")
            metrics = train_or_reuse(args.config, RECIPES[recipe] + STOP + args.set
                                     + [f"seed={seed}"], out)
            best = metrics["best_epoch"]
            valid = next(e["valid"] for e in metrics["epochs"] if e["epoch"] == best)
            valid_auc.append(valid["auc"])
            valid_gauc.append(valid["gauc"])
            if "lift_share" in valid:
                share.append(valid["lift_share"]["auc"])
            epochs.append(best)
            tests.append(metrics["test"])
            print(f"[sweep] {recipe} seed {seed}: valid AUC {valid['auc']:.4f} GAUC "
                  f"{valid['gauc']:.4f} at epoch {best}", flush=True)
        rows.append({"recipe": recipe, "auc": statistics.mean(valid_auc),
                     "gauc": statistics.mean(valid_gauc),
                     "share": statistics.mean(share) if share else None,
                     "epochs": epochs, "tests": tests})
    winner = max(rows, key=lambda r: r[args.select])
    lines = [f"`{args.config}`, seeds {args.seeds}, early stopping (patience 2, cap 20); "
             f"selected on validation {args.select.upper()}", "",
             "| recipe | overrides | valid AUC | valid GAUC | share of the possible AUC lift "
             "(valid) | best epochs |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r[args.select]):
        mark = " **(chosen)**" if r is winner else ""
        share = f"{r['share']:.0%}" if r["share"] is not None else "-"
        lines.append(f"| {r['recipe']}{mark} | `{' '.join(RECIPES[r['recipe']]) or '-'}` | "
                     f"{r['auc']:.4f} | {r['gauc']:.4f} | {share} | {r['epochs']} |")
    if args.report_test:
        t = winner["tests"]
        lines += ["", f"Winner `{winner['recipe']}` on test: AUC "
                  f"{statistics.mean(x['auc'] for x in t):.4f}, GAUC "
                  f"{statistics.mean(x['gauc'] for x in t):.4f}" + (
                      f", best possible AUC "
                      f"{statistics.mean(x['best_possible']['auc'] for x in t):.4f}, share "
                      f"{statistics.mean(x['lift_share']['auc'] for x in t):.0%}"
                      if "lift_share" in t[0] else "")]
    emit_table(lines, args.output)


if __name__ == "__main__":
    main()
