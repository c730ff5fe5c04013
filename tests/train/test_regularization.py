import numpy as np
import torch

from torchrec_din.testing.toy import toy_batch, toy_collections
from torchrec_din.train.regularization import MiniBatchAwareL2


def test_only_batch_rows_scaled_by_frequency() -> None:
    ec, _ = toy_collections(num_items=10, num_cates=4)
    item_w = ec.embeddings["item"].weight
    freq = {"item": np.arange(1, 11, dtype=float)}
    reg = MiniBatchAwareL2({"item": ["item", "hist_item"]}, freq, 0.5)
    batch = toy_batch([2, 0, 1], num_items=10, num_cates=4, seed=2)
    kjt = batch.sequence_features
    ids = torch.unique(torch.cat([kjt["item"].values(), kjt["hist_item"].values()]))
    expected = 0.5 * sum(item_w[i].detach().pow(2).sum().item() / freq["item"][i] for i in ids.tolist())
    value = reg(reg.lookups_from_tables({"item": item_w}, [kjt]))
    assert abs(value.item() - expected) < 1e-5
    value.backward()
    untouched = [i for i in range(10) if i not in set(ids.tolist())]
    assert torch.all(item_w.grad[untouched] == 0)
    assert torch.all(item_w.grad[ids].abs().sum(1) > 0)


def test_the_lookup_outputs_give_the_same_penalty_and_gradients() -> None:
    """From the collection's output (the sharded form) the penalty and the tables'
    gradients equal those taken from the weights, repeated ids counted once."""
    from torchrec_din.train.regularization import occurrences

    torch.testing.assert_close(occurrences(torch.tensor([3, 1, 3, 3, 0, 1])),
                               torch.tensor([3.0, 2.0, 3.0, 3.0, 1.0, 2.0]))
    ec, _ = toy_collections(num_items=10, num_cates=4)
    freq = {"item": np.arange(1, 11, dtype=float), "cate": np.arange(2, 6, dtype=float)}
    reg = MiniBatchAwareL2({"item": ["item", "hist_item"], "cate": ["cate", "hist_cate"]},
                           freq, 0.3)
    kjt = toy_batch([4, 0, 7, 1], num_items=10, num_cates=4, seed=5).sequence_features
    weights = {t: ec.embeddings[t].weight for t in ("item", "cate")}
    from_tables = reg(reg.lookups_from_tables(weights, [kjt]))
    grads = torch.autograd.grad(from_tables, list(weights.values()))
    from_outputs = reg(reg.lookups_from_outputs(kjt, ec(kjt), None, {}))
    torch.testing.assert_close(from_outputs, from_tables)
    for got, want in zip(torch.autograd.grad(from_outputs, list(weights.values())), grads):
        torch.testing.assert_close(got, want)
