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
    p_train.add_argument("--resume", action="store_true",
                         help="continue the run in --output-dir from its last.pt")
    args = parser.parse_args(argv)

    if args.command == "train":
        from torchrec_din.data.raw import DataFormatError
        from torchrec_din.train import load_config, train
        from torchrec_din.train.loop import TrainingInterrupted

        out = args.output_dir or os.path.join(
            "runs", os.path.splitext(os.path.basename(args.config))[0])
        try:
            config = load_config(args.config, args.set)
        except (KeyError, ValueError, FileNotFoundError) as e:
            print(f"error: bad config: {e}", file=sys.stderr)
            return 2
        try:
            results = train(config, out, resume=args.resume)
        except TrainingInterrupted as e:
            print(f"[stopped] {e}", file=sys.stderr)
            return 128 + e.signum
        except (DataFormatError, FloatingPointError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"[done] test AUC {results['test']['auc']:.4f}  GAUC {results['test']['gauc']:.4f}"
              f"  -> {os.path.join(out, 'metrics.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
