"""One-process training step time and peak memory against the item table's size.

Two ways to train the same model on the same batches (B = 256, every history 100 long, ids
uniform over the table, the default MovieLens model with no regulariser):

* ``dense``: the unsharded model and ``torch.optim.Adam`` over every parameter (the
  one-process path before the tables moved to FBGEMM's fused optimizer): the backward
  writes a dense gradient the size of each table and Adam updates every row and keeps two
  full-size state tensors, so a step costs O(table).
* ``fused``: what training runs now on 1 or N processes: DistributedModelParallel (here over
  a 1-rank world), the tables updated inside the backward by FBGEMM's fused row-wise Adagrad
  (O(rows the batch touches), one float of state per row), the dense part by Adam, batches
  through TrainPipelineSparseDist.

Each (mode, rows) runs in its own process, so its peak RSS is its own. Prints the median
step time over ``--steps`` steps after warm-up, peak RSS, and each row's time over the
smallest table's.

Run:
    .venv/bin/python benchmarks/table_size.py [--rows 10000 2000000 20000000]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.batch import DINBatch
from torchrec_din.config import load_config

B, T, D_POOLED = 256, 100, 16
POOLED_ROWS = {"user": 943, "age": 61, "gender": 2, "occupation": 21}


def _batches(items: int, steps: int, seed: int = 0) -> Iterator[DINBatch]:
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(B, dtype=torch.long)
    hist = torch.full((B,), T, dtype=torch.long)
    for _ in range(steps):
        seq = KeyedJaggedTensor.from_lengths_sync(
            keys=["item", "cate", "hist_item", "hist_cate"],
            values=torch.cat([torch.randint(0, items, (B,), generator=g),
                              torch.randint(0, 19, (B,), generator=g),
                              torch.randint(0, items, (B * T,), generator=g),
                              torch.randint(0, 19, (B * T,), generator=g)]),
            lengths=torch.cat([ones, ones, hist, hist]))
        pooled = KeyedJaggedTensor.from_lengths_sync(
            keys=list(POOLED_ROWS),
            values=torch.cat([torch.randint(0, n, (B,), generator=g)
                              for n in POOLED_ROWS.values()]),
            lengths=torch.ones(B * len(POOLED_ROWS), dtype=torch.long))
        yield DINBatch(seq, pooled, torch.zeros(B, 0), torch.randint(0, 2, (B,), generator=g).float())


def _child(mode: str, rows: int, steps: int, warmup: int) -> Dict[str, Any]:
    """One (mode, rows) measurement, in this process."""
    from torchrec_din.build import build_model
    from torchrec_din.models import DINTrain

    config = load_config("configs/movielens_din.yaml",
                         ["train.regularization=none", f"tables.item.num_embeddings={rows}"])
    vocab = {"item": rows, "cate": 19, **POOLED_ROWS}
    total = warmup + steps
    times: List[float] = []
    if mode == "dense":
        model = DINTrain(build_model(vocab, config))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        for batch in _batches(rows, total):
            loss, _ = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            float(loss)
            now = time.perf_counter()
            times.append(now - start)
            start = now
    else:
        import torch.distributed as dist
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        from torchrec_din.distributed import dense_parameters, make_sharders, manual_plan, shard

        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        model = DINTrain(build_model(vocab, config, device=torch.device("meta")))
        sharders = make_sharders("rowwise_adagrad", 0.05)
        dmp = shard(model, manual_plan(model, {}, 1, sharders), sharders)
        opt = torch.optim.Adam([p for _, p in dense_parameters(dmp)], lr=1e-3)
        pipeline = TrainPipelineSparseDist(dmp, opt, torch.device("cpu"))
        it = _batches(rows, total)
        start = time.perf_counter()
        for _ in range(total):
            loss = pipeline.progress(it)[0]
            float(loss)
            now = time.perf_counter()
            times.append(now - start)
            start = now
        dist.destroy_process_group()
    return {"mode": mode, "rows": rows, "ms": statistics.median(times[warmup:]) * 1e3,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 2_000_000, 20_000_000])
    parser.add_argument("--modes", nargs="+", default=["dense", "fused"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.steps, args.warmup)))
        return
    results: Dict[str, Dict[int, Dict[str, Any]]] = {}
    for mode in args.modes:
        for rows in args.rows:
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(rows),
                                  "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                 capture_output=True, text=True, env=dict(os.environ))
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-3000:])
            results.setdefault(mode, {})[rows] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[mode][rows]
            print(f"  {mode} {rows:>11,} rows: {r['ms']:.1f} ms/step, peak RSS "
                  f"{r['peak_rss_gb']:.2f} GB", flush=True)
    print(f"\nOne process, B={B}, T={T}, median of {args.steps} steps, "
          f"{torch.get_num_threads()} threads\n")
    print("| mode | item rows | ms / step | x smallest table | peak RSS (GB) |")
    print("|---|---|---|---|---|")
    for mode, by_rows in results.items():
        base = by_rows[min(by_rows)]["ms"]
        for rows, r in sorted(by_rows.items()):
            print(f"| {mode} | {rows:,} | {r['ms']:.1f} | {r['ms'] / base:.2f}x | "
                  f"{r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
