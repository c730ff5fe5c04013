"""Where one DIN training step spends its time (single process, CPU).

Phases, each timed with ``time.perf_counter`` around the same calls the model makes
(``DINModel.forward`` split into its parts), over MovieLens-100k ``rating`` batches of 256 with
the default config: data loading (building a DINBatch from the sample table), KJT handling
(the collection's split of the KJT into per-feature JaggedTensors), embedding lookup, the
attention (``DINInteraction``), the pooled features + over arch + loss, backward (all
phases together: autograd runs them as one pass), and the optimizer step. Medians over
steps of each phase's milliseconds, and their share of the step.

Run:
    .venv/bin/python benchmarks/step_profile.py
"""

import argparse
import statistics
import time
from typing import Dict, List

import numpy as np
import torch

from torchrec_din import DINTrain
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.loader import DINDataset
from torchrec_din.train.builder import build_model, build_table
from torchrec_din.train.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--config", default="configs/movielens_din.yaml")
    args = parser.parse_args()
    config = load_config(args.config, ["train.progress=false"])
    table = build_table(config["data"], int(config["seed"]))
    dataset = DINDataset(table, "train", FeatureSchema.from_config(config["features"]))
    torch.manual_seed(0)
    model = build_model(table.vocab, config)
    train_model = DINTrain(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(0).permutation(len(dataset))
    batch_size = int(config["train"]["batch_size"])
    phases: Dict[str, List[float]] = {k: [] for k in (
        "data loading", "KJT handling", "embedding lookup", "attention",
        "over arch + loss", "backward", "optimizer")}
    ec, interaction = model.embedding_collection, model.interaction

    def tick(name: str, start: float) -> float:
        now = time.perf_counter()
        phases[name].append((now - start) * 1e3)
        return now

    for step in range(args.steps + 5):
        t = time.perf_counter()
        batch = dataset[order[step * batch_size:(step + 1) * batch_size]]
        t = tick("data loading", t)
        features = batch.sequence_features.to_dict()  # what the collection does first
        t = tick("KJT handling", t)
        embeddings = {}
        for config_ in ec.embedding_configs():
            for name in config_.feature_names:
                jt = features[name]
                embeddings[name] = type(jt)(values=ec.embeddings[config_.name](jt.values()),
                                            lengths=jt.lengths())
        t = tick("embedding lookup", t)
        candidates = interaction.candidates(embeddings)
        interest = interaction(embeddings)
        t = tick("attention", t)
        logits = model._over_arch(candidates, interest, batch.pooled_features,
                                  batch.dense_features, None)
        loss = train_model.loss_fn(logits, batch.labels)
        t = tick("over arch + loss", t)
        optimizer.zero_grad()
        loss.backward()
        t = tick("backward", t)
        optimizer.step()
        tick("optimizer", t)
        if step == 4:  # warm-up steps are not counted
            for values in phases.values():
                values.clear()
    medians = {k: statistics.median(v) for k, v in phases.items()}
    total = sum(medians.values())
    print(f"{args.config}, B = {batch_size}, {torch.get_num_threads()} threads, medians of "
          f"{args.steps} steps (the model's own forward, phase by phase)")
    print("| phase | ms | share |")
    print("|---|---|---|")
    for name, ms in medians.items():
        print(f"| {name} | {ms:.2f} | {ms / total:.0%} |")
    print(f"| step | {total:.2f} | 100% |")
    # The phases re-run what DINModel.forward does; check that they give its logits.
    model.eval()
    with torch.no_grad():
        ref = model(batch.sequence_features, batch.pooled_features, batch.dense_features)
        emb = ec(batch.sequence_features)
        got = model._over_arch(interaction.candidates(emb), interaction(emb),
                               batch.pooled_features, batch.dense_features, None)
    torch.testing.assert_close(got, ref)


if __name__ == "__main__":
    main()
