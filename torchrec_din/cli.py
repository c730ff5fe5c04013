"""Command line: ``python -m torchrec_din train --config FILE [--set k=v ...] [--output-dir DIR]``."""

import argparse
import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchrec_din",
                                     description="DIN on TorchRec: train and evaluate")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train and evaluate a model from a YAML config")
    p_train.add_argument("--config", required=True, help="YAML config (see configs/)")
    p_train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set train.epochs=2")
    p_train.add_argument("--output-dir", default=None,
                         help="where metrics.json, curves.png and checkpoints go "
                              "(default runs/<config name>)")
    args = parser.parse_args(argv)

    if args.command == "train":
        from torchrec_din.train import load_config, train

        config = load_config(args.config, args.set)
        out = args.output_dir or os.path.join(
            "runs", os.path.splitext(os.path.basename(args.config))[0])
        results = train(config, out)
        print(f"[done] test AUC {results['test']['auc']:.4f}  GAUC {results['test']['gauc']:.4f}"
              f"  -> {os.path.join(out, 'metrics.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
