"""What the MBA regulariser costs per training step, against the same model without it.

Builds the training backend the CLI uses (``train.sharded.ShardedBackend``, one process) twice
from one config, once as configured (``train.regularization=mba`` in the MovieLens default)
and once with ``train.regularization=none``, and times the same training batches through
each (data, forward with the penalty, backward and fused table update, Adam step on the
dense part), alternating the two for
``--repeats`` rounds of ``--steps`` steps. Prints the median milliseconds per step of each
and their ratio. Each round's first steps are warm-up and are not timed.

Run:
    .venv/bin/python benchmarks/regularization_cost.py [--config configs/movielens_din.yaml]
"""

import argparse
import statistics
import tempfile
import time
from itertools import islice
from typing import Any, Dict, List, Tuple

import torch

from torchrec_din.allocator import keep_freed_memory
from torchrec_din.config import load_config
from torchrec_din.data.registry import open_source
from torchrec_din.data.source import EpochLoader
from torchrec_din.train.sharded import ShardedBackend


def _backend(config: Dict[str, Any], out: str) -> Tuple[ShardedBackend, EpochLoader]:
    """The CLI's backend set up on ``config`` in the 1-rank world already joined, and its
    training loader."""
    backend = ShardedBackend(config)
    backend.rank, backend.world, backend.control = 0, 1, None  # the joined world's
    source = open_source(config, backend.main_first)
    size = int(config["train"]["batch_size"])
    splits = source.splits({"train": size, "valid": size, "test": size},
                           int(config["seed"]), 0, 1)
    backend.setup(config, source, splits, out)
    loader = splits["train"].loader(int(config["seed"]), 0)
    return backend, loader


def _time_steps(backend: ShardedBackend, loader: EpochLoader, steps: int,
                warmup: int) -> List[float]:
    loader.set_epoch(0, 0)
    times: List[float] = []
    start = time.perf_counter()
    for i, (loss, _) in enumerate(islice(backend.train_batches(loader), warmup + steps)):
        float(loss)  # the step is done when its loss is read
        now = time.perf_counter()
        if i >= warmup:
            times.append((now - start) * 1e3)
        start = now
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/movielens_din.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()  # as training does by default
    torch.manual_seed(0)
    base = ["train.progress=false", "train.device=cpu"]
    config = load_config(args.config, base)
    with tempfile.TemporaryDirectory() as tmp, ShardedBackend(config):  # the 1-rank world
        variants = {
            "as configured": _backend(config, tmp),
            "regularization=none": _backend(
                load_config(args.config, base + ["train.regularization=none"]), tmp),
        }
        medians: Dict[str, List[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (backend, loader) in variants.items():
                medians[name].append(statistics.median(
                    _time_steps(backend, loader, args.steps, args.warmup)))
    with_mba = statistics.median(medians["as configured"])
    without = statistics.median(medians["regularization=none"])
    print(f"{args.config} (train.regularization={config['train']['regularization']}), batch "
          f"{config['train']['batch_size']}, {args.repeats} rounds of "
          f"{args.steps} steps, median ms per step")
    print("| variant | ms per step (median of round medians) | round medians |")
    print("|---|---|---|")
    for name, values in medians.items():
        print(f"| {name} | {statistics.median(values):.1f} | "
              f"{', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nas configured / none: {with_mba / without:.2f}x")


if __name__ == "__main__":
    main()
