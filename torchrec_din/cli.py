"""Command line.

``python -m torchrec_din train --config FILE [--set k=v ...] [--output-dir DIR] [--resume]``
``python -m torchrec_din export --checkpoint RUN_DIR --output scorer.pt``
``python -m torchrec_din score --checkpoint RUN_DIR --input requests.jsonl --output scores.jsonl``
``python -m torchrec_din plan --config FILE --world-size N [--compute-device cuda] [--set ...]``
"""

import argparse
import os
import sys
from typing import List, Optional


TRAIN_EXTRA = ("yaml", "tqdm", "matplotlib")


def _missing_train_extra() -> List[str]:
    import importlib.util

    return [m for m in TRAIN_EXTRA if importlib.util.find_spec(m) is None]


def main(argv: Optional[List[str]] = None) -> int:
    missing = _missing_train_extra()
    if missing:
        print(f"error: the command line needs the 'train' extra (missing modules: {missing}); "
              "install it with: pip install 'torchrec-din[train]'", file=sys.stderr)
        return 2
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
                         help="continue the run in --output-dir from its last.pt (last_dcp/ "
                              "under torchrun); same seed, data and model config")
    p_export = sub.add_parser("export", help="TorchScript the multi-candidate scorer of a run")
    p_export.add_argument("--checkpoint", required=True, help="run folder (uses best.pt) or .pt")
    p_export.add_argument("--output", required=True, help="file for torch.jit.save")
    p_score = sub.add_parser("score", help="score JSON Lines requests: one user, many candidates "
                                           "per line")
    p_score.add_argument("--checkpoint", required=True, help="run folder (uses best.pt) or .pt")
    p_score.add_argument("--input", required=True, help="requests, one JSON object per line")
    p_score.add_argument("--output", required=True, help="scores, one JSON object per line")
    p_score.add_argument("--batch-users", type=int, default=256, help="users scored together")
    p_plan = sub.add_parser("plan", help="print the TorchRec planner's sharding plan and per-rank "
                                         "memory for a config (model on the meta device)")
    p_plan.add_argument("--config", required=True)
    p_plan.add_argument("--world-size", type=int, required=True)
    p_plan.add_argument("--compute-device", choices=["cuda", "cpu"], default="cuda")
    p_plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="e.g. --set tables.item.num_embeddings=1000000000")
    args = parser.parse_args(argv)

    if args.command == "plan":
        from torchrec_din.train.planning import print_plan
        from torchrec_din.train import load_config
        from torchrec_din.train.builder import build_table

        try:
            config = load_config(args.config, args.set)
        except (KeyError, ValueError, FileNotFoundError) as e:
            print(f"error: bad config: {e}", file=sys.stderr)
            return 2
        table = build_table(config["data"], int(config["seed"]))
        print_plan(config, table.vocab, args.world_size, args.compute_device,
                   mean_history=table.summary()["train"]["mean_history"])
        return 0
    if args.command in ("export", "score"):
        return _serve(args)
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
            if "LOCAL_RANK" in os.environ:  # launched by torchrun: sharded training
                from torchrec_din.train.distributed import train_distributed

                results = train_distributed(config, out, resume=args.resume)
                if results is None:  # not rank 0
                    return 0
            else:
                results = train(config, out, resume=args.resume)
        except TrainingInterrupted as e:
            print(f"[stopped] {e}", file=sys.stderr)
            return 128 + e.signum
        except (DataFormatError, FloatingPointError, FileNotFoundError, ValueError) as e:
            if os.environ.get("TORCHREC_DIN_DEBUG"):
                raise  # the full traceback, for debugging
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"[done] test AUC {results['test']['auc']:.4f}  GAUC {results['test']['gauc']:.4f}"
              f"  -> {os.path.join(out, 'metrics.json')}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import json

    import torch

    from torchrec_din.serve import DINScorer, export_scorer, load_trained
    from torchrec_din.serve.requests import read_requests, RequestError, to_tensors
    from torchrec_din.train.checkpoint import atomic_write_text

    try:
        model, state = load_trained(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.command == "export":
        export_scorer(model, args.output)
        print(f"[export] TorchScript scorer of {args.checkpoint} (epoch {state.get('epoch')}) "
              f"-> {args.output}")
        return 0
    scorer = DINScorer(model).eval()
    vocab = state["vocab"]
    rows = {f: vocab[f] for f in scorer.features + scorer.pooled_features}
    try:
        requests = list(read_requests(args.input, scorer.features, scorer.pooled_features, rows,
                                      scorer.dense_in_features))
    except (RequestError, FileNotFoundError) as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 1
    lines = []
    with torch.no_grad():
        for start in range(0, len(requests), args.batch_users):
            chunk = requests[start:start + args.batch_users]
            probs = torch.sigmoid(scorer(*to_tensors(chunk))).tolist()
            offset = 0
            for r in chunk:
                k = len(r["candidates"][0])
                lines.append(json.dumps({"id": r["id"], "scores": probs[offset:offset + k]}))
                offset += k
    atomic_write_text("\n".join(lines) + "\n", args.output)
    print(f"[score] {len(requests)} users, {sum(len(r['candidates'][0]) for r in requests)} "
          f"candidates -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
