"""Reproduce the README results table: BaseModel, DIN and DIN+Dice on MovieLens-100k.

Trains every model for several seeds through the same code path as the CLI, then prints a
Markdown table of test AUC, GAUC (the paper's impression-weighted Eq. 10), logloss
(mean +- standard deviation over seeds) and RelaImpr over BaseModel, with the popularity
baseline, and writes it to ``--output``.

Run:
    .venv/bin/python benchmarks/movielens_results.py --protocol rating --seeds 0 1 2
"""

import argparse
import json
import os
import statistics
from typing import Dict, List, Optional

from torchrec_din.train import load_config, train

# name -> (config, extra overrides). All share the defaults chosen by
# benchmarks/sweep_defaults.py (learning rate, embedding dim, epoch cap and early stopping),
# so BaseModel gets the same stopping rule. BaseModel+Dice is not in the paper: it shows how
# much of DIN+Dice's gain comes from Dice in the over arch alone.
MODELS = {
    "BaseModel": ("configs/movielens_base.yaml", []),
    "BaseModel+Dice": ("configs/movielens_base.yaml", ["model.over_arch_activation=dice"]),
    "DIN (paper's sigmoid unit)": ("configs/movielens_din_sigmoid.yaml", []),
    "DIN+Dice (default)": ("configs/movielens_din.yaml", []),
}


def train_or_reuse(config_path: str, overrides: List[str], out: str) -> Dict:
    """metrics.json of a finished run in ``out`` (so a partly done table or sweep resumes),
    else continue an interrupted run there (same config), else train one from scratch."""
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        if "test" in metrics:
            return metrics
    config = load_config(config_path, overrides)
    if os.path.exists(os.path.join(out, "last.pt")):
        try:
            return train(config, out, resume=True)
        except ValueError as e:  # another config: start over
            print(f"[results] not resuming {out}: {e}")
    return train(config, out, overwrite=True)


def emit_table(lines: List[str], output: Optional[str]) -> None:
    """Print a Markdown table and write it to ``output`` if given."""
    table = "\n".join(lines)
    print(table)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(table + "\n")


def rela_impr(auc: float, base: float) -> float:
    """The paper's RelaImpr: (AUC - 0.5) / (AUC_base - 0.5) - 1."""
    return (auc - 0.5) / (base - 0.5) - 1.0


def _fmt(values: List[float], digits: int = 4) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=["next_item", "rating"], default="rating")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    parser.add_argument("--runs-dir", default="runs/results")
    parser.add_argument("--output", default=None, help="Markdown file for the table")
    args = parser.parse_args()

    results: Dict[str, List[Dict]] = {name: [] for name in MODELS}
    popularity: List[Dict] = []
    for seed in args.seeds:
        for name, (path, model_overrides) in MODELS.items():
            out = os.path.join(args.runs_dir, args.protocol, f"{name}-seed{seed}")
            overrides = [f"seed={seed}", f"data.protocol={args.protocol}",
                         "train.progress=false"] + model_overrides + args.set
            if args.protocol == "next_item":  # each positive comes with a negative
                overrides += ["data.valid_per_user=5", "data.test_per_user=5"]
            metrics = train_or_reuse(path, overrides, out)
            results[name].append({**metrics["test"], "epochs_run": len(metrics["epochs"])})
            if name == "BaseModel":
                popularity.append(metrics["baselines"]["popularity"])

    base_gauc = statistics.mean(r["gauc"] for r in results["BaseModel"])
    base_auc = statistics.mean(r["auc"] for r in results["BaseModel"])
    lines = [
        f"MovieLens-100k, protocol `{args.protocol}`, seeds {args.seeds} "
        f"(test set: {results['BaseModel'][0]['samples']} samples)",
        "",
        "| model | test AUC | test GAUC | logloss | RelaImpr (GAUC) | RelaImpr (AUC) |",
        "|---|---|---|---|---|---|",
        f"| popularity | {_fmt([p['auc'] for p in popularity])} | "
        f"{_fmt([p['gauc'] for p in popularity])} | - | "
        f"{rela_impr(statistics.mean(p['gauc'] for p in popularity), base_gauc):+.2%} | "
        f"{rela_impr(statistics.mean(p['auc'] for p in popularity), base_auc):+.2%} |",
    ]
    for name, runs in results.items():
        g = statistics.mean(r["gauc"] for r in runs)
        a = statistics.mean(r["auc"] for r in runs)
        lines.append(
            f"| {name} | {_fmt([r['auc'] for r in runs])} | {_fmt([r['gauc'] for r in runs])} | "
            f"{_fmt([r['logloss'] for r in runs])} | {rela_impr(g, base_gauc):+.2%} | "
            f"{rela_impr(a, base_auc):+.2%} |")
    se = statistics.mean(r["gauc_se"] for r in results["DIN+Dice (default)"])
    epochs = {name: [r["epochs_run"] for r in runs] for name, runs in results.items()}
    lines += ["", "Epochs trained (early stopping, patience and cap from the config): " + "; ".join(
        f"{name} {ep}" for name, ep in epochs.items())]
    lines += ["", f"GAUC bootstrap standard error of one test evaluation: {se:.4f}."]
    emit_table(lines, args.output)


if __name__ == "__main__":
    main()
