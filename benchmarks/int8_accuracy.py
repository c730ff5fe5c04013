"""Accuracy of int8 embedding tables (torchrec's inference quantization) on the test split.

Loads a trained run (default: README command 1's ``runs/movielens_din``), evaluates the fp32
model and the same model after ``torchrec.inference.modules.quantize_inference_model`` (int8
row-wise tables for the EmbeddingCollection and EmbeddingBagCollection), and prints both.

Run:
    .venv/bin/python benchmarks/int8_accuracy.py --checkpoint runs/movielens_din
"""

import argparse
import copy

from torchrec.inference.modules import quantize_inference_model

from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.loader import DINDataset, make_loader
from torchrec_din.metrics import evaluate_predictions
from torchrec_din.serve import load_trained
from torchrec_din.data.registry import build_table
from torchrec_din.train.predict import predict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="runs/movielens_din")
    args = parser.parse_args()
    model, state = load_trained(args.checkpoint)
    config = state["config"]
    table = build_table(config["data"], int(config["seed"]))
    ds = DINDataset(table, "test", FeatureSchema.from_config(config["features"]))
    loader = make_loader(ds, 2048, shuffle=False)
    quant = quantize_inference_model(copy.deepcopy(model))
    rows = {}
    for name, m in (("fp32", model), ("int8", quant)):
        logits, labels, speed = predict(m, loader)
        rows[name] = evaluate_predictions(logits, labels, ds.user_ids())
        rows[name]["samples_per_sec"] = speed
    print(f"{args.checkpoint}: test split, {len(ds)} samples")
    print(f"{'tables':<6} {'AUC':>9} {'GAUC':>9} {'logloss':>9}")
    for name, r in rows.items():
        print(f"{name:<6} {r['auc']:>9.6f} {r['gauc']:>9.6f} {r['logloss']:>9.6f}")
    d = {k: rows["int8"][k] - rows["fp32"][k] for k in ("auc", "gauc", "logloss")}
    print(f"{'change':<6} {d['auc']:>+9.6f} {d['gauc']:>+9.6f} {d['logloss']:>+9.6f}")


if __name__ == "__main__":
    main()
