"""Command line.

``python -m torchrec_din train --config FILE [--set k=v ...] [--output-dir DIR] [--resume]``
``python -m torchrec_din export --checkpoint RUN_DIR --output scorer.pt2 [--format torchscript]``
``python -m torchrec_din score --model scorer.pt2 (or --checkpoint RUN_DIR) --input requests.jsonl
--output scores.jsonl``
``python -m torchrec_din plan --config FILE --world-size N [--compute-device cuda] [--set ...]``
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional


TRAIN_EXTRA = ("yaml", "tqdm", "matplotlib", "pyarrow")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# TorchRec's planner search grows with the ranks (measured on 2 cores, the MovieLens model
# with a 1e9-row item table: 256 ranks 21 s, 1,024 ranks 105 s, 4,096 no answer in 5 min).
MAX_PLAN_WORLD = 512


def _world_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_PLAN_WORLD:
        raise argparse.ArgumentTypeError(
            f"plans for at most {MAX_PLAN_WORLD} ranks, got {value} (TorchRec's planner takes "
            "minutes beyond that; call torchrec_din.planning.plan_for_config yourself)")
    return value


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
                         help="continue the run in --output-dir from its last_dcp/; same seed, "
                              "data and model config")
    p_train.add_argument("--overwrite", action="store_true",
                         help="start over in an --output-dir that holds a run (its files are "
                              "kept aside until the new run's first checkpoint, and put back "
                              "if it fails before that)")
    p_export = sub.add_parser("export", help="export the multi-candidate scorer of a run: an "
                                             "AOTInductor package (default) or TorchScript")
    p_export.add_argument("--checkpoint", required=True, help="run folder (uses best.pt) or .pt")
    p_export.add_argument("--output", required=True,
                          help="the package (e.g. scorer.pt2) or TorchScript file")
    p_export.add_argument("--format", choices=["aoti", "torchscript"], default=None,
                          help="aoti: torch.export + AOTInductor, served by `score --model` "
                               "(default); torchscript: the legacy format (default with --int8)")
    p_export.add_argument("--device", default="cpu",
                          help="cpu, cuda or cuda:N: where the exported scorer runs (an AOTI "
                               "package is compiled for that device)")
    p_export.add_argument("--int8", action="store_true",
                          help="int8 tables (torchrec inference quantization), then fx trace "
                               "and script (TorchScript only)")
    p_score = sub.add_parser("score", help="score JSON Lines requests: one user, many candidates "
                                           "per line")
    source = p_score.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run folder (uses best.pt) or .pt: the eager model")
    source.add_argument("--model", help="a scorer package written by `export` (.pt2): what is "
                                        "served is the exported artifact itself")
    p_score.add_argument("--input", required=True, help="requests, one JSON object per line")
    p_score.add_argument("--output", required=True, help="scores, one JSON object per line")
    p_score.add_argument("--batch-users", type=_positive_int, default=256,
                         help="users scored together")
    p_score.add_argument("--max-history", type=int, default=None,
                         help="keep each request's newest N behaviours (default: the trained "
                              "model's data.max_history; 0 keeps all)")
    p_score.add_argument("--max-pairs", type=_positive_int, default=2_000_000,
                         help="bound on (candidate, behaviour) pairs per call: memory grows "
                              "with it; a single larger request is an error")
    p_score.add_argument("--max-candidates", type=_positive_int, default=65_536,
                         help="candidates per call: a request with more is scored in parts "
                              "(memory grows with candidates too, whatever the history)")
    p_score.add_argument("--device", default="auto",
                         help="auto, cpu, cuda or cuda:N for --checkpoint (auto: cuda when "
                              "available); a --model package runs where it was compiled")
    p_score.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction,
                         default=True,
                         help="glibc malloc keeps freed memory for the next call instead of "
                              "unmapping it: faster calls, the process keeps its peak memory")
    p_plan = sub.add_parser("plan", help="print the TorchRec planner's sharding plan and per-rank "
                                         "memory for a config (model on the meta device)")
    p_plan.add_argument("--config", required=True)
    p_plan.add_argument("--world-size", type=_world_size, required=True,
                        help=f"ranks to plan for (1 to {MAX_PLAN_WORLD})")
    p_plan.add_argument("--compute-device", choices=["cuda", "cpu"], default="cuda")
    p_plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="e.g. --set tables.item.num_embeddings=1000000000")
    p_convert = sub.add_parser("convert", help="write a config's built-in data set as Parquet "
                                               "files plus a config that trains on them")
    p_convert.add_argument("--config", required=True)
    p_convert.add_argument("--output", required=True, help="folder for the files and config")
    p_convert.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p_convert.add_argument("--row-group-rows", type=_positive_int, default=16384)
    p_convert.add_argument("--overwrite", action="store_true",
                           help="replace an earlier convert output in --output (never a "
                                "folder holding other files)")
    args = parser.parse_args(argv)

    if args.command in ("convert", "plan"):
        return _table_command(args)
    if args.command in ("export", "score"):
        return _serve(args)
    if args.command == "train":
        return _train_command(args)
    return 0


def _load_config(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """``--config`` with ``--set`` overrides, or None after printing why it is bad."""
    from torchrec_din.config import load_config

    try:
        return load_config(args.config, args.set)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: bad config: {e}", file=sys.stderr)
        return None


# What torch and TorchRec print on every training run, about their own internals, that a
# user can neither act on nor avoid: the planner's advice on how to build a Topology and its
# storage estimate, DDP's broadcast_buffers rename (TorchRec passes the old name),
# ShardedTensor's deprecation inside torch.distributed.checkpoint, and an fx notice TorchRec's
# pipeline triggers. The CLI hides exactly these; everything else still shows.
_LIBRARY_NOISE = (
    r"`broadcast_buffers` is deprecated",
    r"Please use DTensor instead and we are deprecating ShardedTensor",
    r"HeuristicalStorageReservation is known to cause issues",
)
_NOISY_LOGGERS = ("torchrec.distributed.planner.types",
                  "torchrec.distributed.planner.storage_reservations",
                  "torch.fx._symbolic_trace")


def _quiet_library_noise() -> None:
    import logging
    import warnings

    for message in _LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _train_command(args: argparse.Namespace) -> int:
    """``train``: the only command that imports ``torchrec_din.train``."""
    from contextlib import ExitStack

    _quiet_library_noise()

    from torchrec_din.data.raw import DataFormatError
    from torchrec_din.train import train
    from torchrec_din.train.engine import TrainingInterrupted
    from torchrec_din.train.rundir import check_run_dir, RunLock

    out = args.output_dir or os.path.join(
        "runs", os.path.splitext(os.path.basename(args.config))[0])
    config = _load_config(args)
    if config is None:
        return 2
    try:
        with ExitStack() as stack:
            if os.environ.get("RANK", "0") == "0":  # one process owns the run folder
                stack.enter_context(RunLock(out))
                check_run_dir(out, args.resume, args.overwrite)
            # One process, or each rank under torchrun: the same path.
            results = train(config, out, args.resume, args.overwrite)
            if results is None:  # not rank 0
                return 0
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


def _table_command(args: argparse.Namespace) -> int:
    """``convert`` and ``plan``: a config's built-in data set, written as Parquet or planned."""
    from torchrec_din.data.registry import open_source
    from torchrec_din.data.source import NotConvertible

    config = _load_config(args)
    if config is None:
        return 2
    try:
        if args.command == "convert":  # refuse a bad --output before building the data
            from torchrec_din.data.convert import check_output

            check_output(args.output, args.overwrite)
        source = open_source(config)  # Parquet: sizes from the config, the files' metadata
        if args.command == "plan":
            from torchrec_din.planning import print_plan

            _quiet_library_noise()

            print_plan(config, source.vocab, args.world_size, args.compute_device,
                       mean_history=source.summary()["train"]["mean_history"])
            return 0
        from torchrec_din.data.convert import convert

        path = convert(source, config, args.output, args.row_group_rows, args.overwrite)
    except NotConvertible as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[convert] {source.summary()['train']['samples']} train samples -> {args.output}; "
          f"train with: python -m torchrec_din train --config {path}")
    return 0


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse outputs that are folders or unwritable, and a score output equal to its input."""
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if os.path.isdir(args.output):
        raise ValueError(f"--output {args.output} is a folder; name a file")
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise ValueError(f"--output {args.output}: cannot write into {out_dir}")
    if args.command == "score":
        if os.path.isdir(args.input):
            raise ValueError(f"--input {args.input} is a folder; name a JSON Lines file")
        if os.path.exists(args.input) and os.path.exists(args.output) and \
                os.path.samefile(args.input, args.output):
            raise ValueError(f"--output {args.output} is the --input file; scores would "
                             "replace the requests")


def _serve(args: argparse.Namespace) -> int:
    import json
    import time

    import torch

    from torchrec_din.serve import DINScorer, export_scorer, load_trained
    from torchrec_din.serve.export import export_aoti_scorer, load_aoti_scorer, scorer_spec
    from torchrec_din.serve.requests import (
        batches_within,
        history_length,
        read_requests,
        RequestError,
        split_candidates,
        to_device,
        to_tensors,
    )
    from torchrec_din.io import atomic_write_text
    from torchrec_din.config import resolve_device

    try:
        _check_paths(args)
        if args.command == "export" or args.checkpoint:
            device = resolve_device(args.device)
            model, state = load_trained(args.checkpoint, device)
            multi_hot = state.get("serving", {}).get("pooled_multi_hot")  # None: older best.pt
        else:
            runner, spec = load_aoti_scorer(args.model)
            device = torch.device(spec.get("device", "cpu"))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.command == "export":
        cap = int(state["config"]["data"]["max_history"])
        fmt = args.format or ("torchscript" if args.int8 else "aoti")
        if fmt == "aoti" and args.int8:
            print("error: --int8 exports TorchScript only (--format torchscript): TorchRec's "
                  "quantized collections are exported through torchrec.fx + TorchScript",
                  file=sys.stderr)
            return 2
        start = time.perf_counter()
        if fmt == "torchscript":
            export_scorer(model, args.output, cap, int8=args.int8)
            what = f"TorchScript {'int8 ' if args.int8 else ''}scorer"
        else:
            export_aoti_scorer(model, args.output, cap, multi_hot)
            what = "AOTInductor scorer package"
        print(f"[export] {what} of {args.checkpoint} (epoch {state.get('epoch')}) -> "
              f"{args.output} ({time.perf_counter() - start:.0f} s)")
        return 0
    if args.checkpoint:
        trained_cap = int(state["config"]["data"]["max_history"])
        max_history = trained_cap if args.max_history is None else args.max_history
        if max_history < 0:
            print(f"error: --max-history must be >= 0, got {max_history}", file=sys.stderr)
            return 2
        runner = DINScorer(model, max_history).eval()
        spec = scorer_spec(runner, multi_hot)
    else:
        max_history = int(spec["max_history"])
        if args.max_history is not None and args.max_history != max_history:
            print(f"error: --model {args.model} keeps the newest {max_history} behaviours "
                  f"(fixed when it was exported); --max-history {args.max_history} needs a "
                  "new export or --checkpoint", file=sys.stderr)
            return 2
    if args.keep_freed_memory:
        from torchrec_din.allocator import keep_freed_memory

        keep_freed_memory()
    groups = list(zip(spec["group_names"], spec["group_features"]))
    pooled = spec["pooled_features"]
    try:
        requests = list(read_requests(args.input, spec["features"], groups, pooled,
                                      spec["rows"], spec["dense_in_features"],
                                      spec["pooled_multi_hot"]))
        cut = sum(history_length(r) - history_length(r, max_history) for r in requests)
        chunks = list(batches_within(split_candidates(requests, args.max_candidates),
                                     args.batch_users, args.max_pairs, max_history,
                                     args.max_candidates))
    except (RequestError, OSError) as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 1
    if cut:
        print(f"[score] kept the newest {max_history} behaviours per request (as in training): "
              f"{cut} older ones cut")
    scores: List[List[float]] = [[] for _ in requests]
    with torch.no_grad():
        for chunk in chunks:
            inputs = to_device(to_tensors(chunk, pooled), device)
            probs = torch.sigmoid(runner(*inputs)).cpu().tolist()
            offset = 0
            for part in chunk:  # parts of one request come in order
                k = len(part["candidates"][0])
                scores[part["request"]] += probs[offset:offset + k]
                offset += k
    lines = [json.dumps({"id": r["id"], "scores": s}) for r, s in zip(requests, scores)]
    atomic_write_text("\n".join(lines) + "\n", args.output)
    print(f"[score] {len(requests)} users, {sum(len(r['candidates'][0]) for r in requests)} "
          f"candidates -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
