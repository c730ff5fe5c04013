"""Training on shared histories (a positive and its negative as one history with K = 2
candidates) gives the same loss and gradients as the same samples one per row."""

import copy

import numpy as np
import torch

from torchrec_din import DINTrain
from torchrec_din.data.loader import DINDataset
from torchrec_din.data.movielens import load_movielens_100k
from torchrec_din.build import build_model
from torchrec_din.config import load_config


def test_grouped_batch_equals_ungrouped(tmp_path) -> None:
    table = load_movielens_100k(cache_dir=str(tmp_path), protocol="next_item",
                                valid_per_user=5, test_per_user=5).with_max_history(30)
    pooled = table.schema(["user", "age"])
    grouped = DINDataset(table, "train", pooled, group_histories=True)
    flat = DINDataset(table, "all", pooled)
    assert len(grouped) * 2 == len(DINDataset(table, "train", pooled))  # pos + neg per history
    positions = np.arange(40, 104)
    starts, ends = grouped.group_offsets[positions], grouped.group_offsets[positions + 1]
    samples = np.concatenate([grouped.rows[s:e] for s, e in zip(starts, ends)])
    batch_g, batch_f = grouped[positions], flat[samples]
    assert batch_g.labels.tolist() == batch_f.labels.tolist() and batch_g.batch_size == 128
    # The history is carried once per group.
    g_hist = batch_g.sequence_features["hist_item"].values().numel()
    assert 2 * g_hist == batch_f.sequence_features["hist_item"].values().numel()

    config = load_config("configs/movielens_din.yaml", ["features.pooled=[user, age]",
                                                        "model.use_outer_product=true"])
    torch.manual_seed(0)
    model = build_model(table.vocab, config)
    model_g, model_f = DINTrain(copy.deepcopy(model), grouped=True), DINTrain(model)
    loss_g, (_, logits_g, _) = model_g(batch_g)
    loss_f, (_, logits_f, _) = model_f(batch_f)
    torch.testing.assert_close(logits_g, logits_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_g, loss_f)
    loss_g.backward()
    loss_f.backward()
    for (name, p), (_, q) in zip(model_g.named_parameters(), model_f.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, b), (_, c) in zip(model_g.named_buffers(), model_f.named_buffers()):
        torch.testing.assert_close(b, c, msg=name)  # Dice statistics over the same pairs
