import numpy as np
import torch

from torchrec_din.testing.toy import toy_batch, toy_collections
from torchrec_din.train.regularization import MiniBatchAwareL2


def test_only_batch_rows_scaled_by_frequency() -> None:
    ec, _ = toy_collections(num_items=10, num_cates=4)
    item_w = ec.embeddings["item"].weight
    freq = {"item": np.arange(1, 11, dtype=float)}
    reg = MiniBatchAwareL2({"item": item_w}, {"item": ["item", "hist_item"]}, freq, 0.5)
    batch = toy_batch([2, 0, 1], num_items=10, num_cates=4, seed=2)
    kjt = batch.sequence_features
    ids = torch.unique(torch.cat([kjt["item"].values(), kjt["hist_item"].values()]))
    expected = 0.5 * sum(item_w[i].detach().pow(2).sum().item() / freq["item"][i] for i in ids.tolist())
    value = reg([kjt])
    assert abs(value.item() - expected) < 1e-5
    value.backward()
    untouched = [i for i in range(10) if i not in set(ids.tolist())]
    assert torch.all(item_w.grad[untouched] == 0)
    assert torch.all(item_w.grad[ids].abs().sum(1) > 0)
