"""Cost of input validation (``validate_inputs``) in DIN training steps.

Times forward + backward + Adam step of DIN on synthetic batches shaped like MovieLens-100k
(B = 256, lognormal histories of mean 56 capped at 100) with validation on and off,
interleaved, and prints medians over repeats, plus the host syncs per step (ops that read
tensor data on the host: each stalls a GPU stream once).

Run:
    .venv/bin/python benchmarks/validation_overhead.py
"""

import argparse
import statistics
import time

import torch

from torchrec_din import DINTrain
from torchrec_din.checks import set_validate_inputs
from torchrec_din.testing.sync import SyncCounter
from torchrec_din.data.loader import DINDataset
from torchrec_din.data.synthetic import generate_synthetic
from torchrec_din.build import build_model
from torchrec_din.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    table = generate_synthetic(num_users=3000, num_items=1700, num_cates=20, samples_per_user=4,
                               mean_length=56, max_length=100, seed=0)
    ds = DINDataset(table, "all", table.schema(["user"]))
    batches = [ds[list(range(i * args.batch_size, (i + 1) * args.batch_size))]
               for i in range(args.steps)]
    config = load_config("configs/movielens_din.yaml", ["features.pooled=[user]"])
    times = {True: [], False: []}
    models = {}
    for flag in (True, False):
        torch.manual_seed(0)
        model = build_model(table.vocab, config)
        set_validate_inputs(model, flag)
        train_model = DINTrain(model)
        models[flag] = (train_model, torch.optim.Adam(model.parameters(), lr=1e-3))
    for _ in range(args.repeats):
        for flag in (True, False):
            train_model, opt = models[flag]
            start = time.perf_counter()
            for batch in batches:
                loss, _ = train_model(batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
            times[flag].append((time.perf_counter() - start) / len(batches))
    syncs = {}
    for flag in (True, False):
        train_model, _ = models[flag]
        with SyncCounter() as counter:
            train_model(batches[0])[0].backward()
        syncs[flag] = counter.total
    on, off = statistics.median(times[True]), statistics.median(times[False])
    n = sum(int(b.sequence_features.values().numel()) for b in batches) / len(batches)
    print(f"B={args.batch_size}, {n:.0f} ids per batch, medians of {args.repeats} x "
          f"{args.steps} training steps")
    print(f"validation on : {on * 1e3:7.2f} ms/step, {syncs[True]} host syncs per step")
    print(f"validation off: {off * 1e3:7.2f} ms/step, {syncs[False]} host syncs per step")
    print(f"overhead      : {(on - off) * 1e3:7.2f} ms/step ({(on / off - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
