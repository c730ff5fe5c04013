"""Where one DIN training step spends its time (single process, CPU), backward included.

Phases, each timed with ``time.perf_counter`` around the same calls the model makes
(``DINModel.forward`` split into its parts), over MovieLens-100k ``rating`` batches with the
default config: data loading (building a DINBatch from the sample table), KJT handling (the
collection's split of the KJT into per-feature JaggedTensors), embedding lookup, the
attention (``DINInteraction``), the pooled features + over arch + loss, and the optimizer
step. The backward is split the same way: the forward is cut at the phase boundaries
(the embeddings and the attention's outputs become leaves that require gradients), and
autograd is run one phase at a time, over arch first, each phase's input gradients fed to
the phase before. The parameter gradients are checked equal to one ordinary
``loss.backward()`` of the same batch, so the split measures the model's real backward.
Medians over steps of each phase's milliseconds, and their share of the step.

Run:
    .venv/bin/python benchmarks/step_profile.py [--batch-size 2048]
"""

import argparse
import statistics
import time
from typing import Dict, List

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from attention import add_malloc_flag, apply_malloc  # benchmarks/attention.py
from torchrec_din import DINTrain
from torchrec_din.batch import DINBatch
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.loader import DINDataset
from torchrec_din.build import build_model
from torchrec_din.data.registry import build_table
from torchrec_din.config import load_config


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the config's train.batch_size")
    parser.add_argument("--config", default="configs/movielens_din.yaml")
    add_malloc_flag(parser)
    args = parser.parse_args()
    malloc = apply_malloc(args)
    config = load_config(args.config, ["train.progress=false"])
    table = build_table(config["data"], int(config["seed"]))
    dataset = DINDataset(table, "train", FeatureSchema.from_config(config["features"]))
    torch.manual_seed(0)
    model = build_model(table.vocab, config)
    train_model = DINTrain(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(0).permutation(len(dataset))
    batch_size = args.batch_size or int(config["train"]["batch_size"])
    names = ("data loading", "KJT handling", "embedding lookup", "attention",
             "over arch + loss", "backward: over arch + loss", "backward: attention",
             "backward: embedding lookup", "optimizer")
    phases: Dict[str, List[float]] = {k: [] for k in names}
    ec, interaction = model.embedding_collection, model.interaction

    def tick(name: str, start: float) -> float:
        now = time.perf_counter()
        phases[name].append((now - start) * 1e3)
        return now

    def split_step(batch: DINBatch, timed: bool) -> None:
        """One training step, forward and backward cut at the phase boundaries."""
        clock = tick if timed else (lambda name, start: time.perf_counter())
        t = time.perf_counter()
        features = batch.sequence_features.to_dict()  # what the collection does first
        t = clock("KJT handling", t)
        looked_up: Dict[str, JaggedTensor] = {}
        for config_ in ec.embedding_configs():
            for name in config_.feature_names:
                jt = features[name]
                looked_up[name] = JaggedTensor(
                    values=ec.embeddings[config_.name](jt.values()), lengths=jt.lengths())
        t = clock("embedding lookup", t)
        embeddings = {k: JaggedTensor(values=_leaf(jt.values()), lengths=jt.lengths())
                      for k, jt in looked_up.items()}
        candidates = interaction.candidates(embeddings)
        interest = interaction(embeddings)
        t = clock("attention", t)
        candidates_in, interest_in = _leaf(candidates), _leaf(interest)
        logits = model._over_arch(candidates_in, interest_in, batch.pooled_features,
                                  batch.dense_features, None)
        loss = train_model.loss_fn(logits, batch.labels)
        t = clock("over arch + loss", t)
        optimizer.zero_grad()
        loss.backward()
        t = clock("backward: over arch + loss", t)
        torch.autograd.backward([candidates, interest], [candidates_in.grad, interest_in.grad])
        t = clock("backward: attention", t)
        outputs = [jt.values() for jt in looked_up.values()]
        grads = [embeddings[k].values().grad for k in looked_up]
        torch.autograd.backward(
            [o for o, g in zip(outputs, grads) if g is not None],
            [g for g in grads if g is not None])
        clock("backward: embedding lookup", t)

    # The split backward gives the gradients of one plain backward of the same batch.
    batch = dataset[order[:batch_size]]
    optimizer.zero_grad()
    loss, _ = train_model(batch)
    loss.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    split_step(batch, timed=False)
    got = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys(), set(got) ^ set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)

    for step in range(args.steps + 5):
        t = time.perf_counter()
        batch = dataset[order[step * batch_size:(step + 1) * batch_size]]
        tick("data loading", t)
        split_step(batch, timed=True)
        t = time.perf_counter()
        optimizer.step()
        tick("optimizer", t)
        if step == 4:  # warm-up steps are not counted
            for values in phases.values():
                values.clear()
    medians = {k: statistics.median(v) for k, v in phases.items()}
    total = sum(medians.values())
    print(f"{args.config}, B = {batch_size}, {torch.get_num_threads()} threads, {malloc}, "
          f"medians of {args.steps} steps (the model's own forward and "
          "backward, phase by phase)")
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
        got_logits = model._over_arch(interaction.candidates(emb), interaction(emb),
                                      batch.pooled_features, batch.dense_features, None)
    torch.testing.assert_close(got_logits, ref)


if __name__ == "__main__":
    main()
