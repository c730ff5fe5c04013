"""One process trains the tables as N processes do: FBGEMM's fused optimizer, in the backward
pass, on the rows a batch looked up only (the training backend on a 1-rank world)."""

from types import SimpleNamespace
from typing import Dict

import torch

from torchrec_din.config import load_config
from torchrec_din.distributed import gather_state_dict
from torchrec_din.testing.toy import toy_batch
from torchrec_din.train.sharded import ShardedBackend

ITEM = "model.embedding_collection.embeddings.item.weight"


def _tables(backend: ShardedBackend) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in gather_state_dict(backend.dmp).items() if "embedding" in k}


def test_one_process_updates_only_the_rows_a_batch_looked_up(tmp_path) -> None:
    config = load_config(None, [
        "features.groups=[{name: b, candidate: [item, cate], history: [hist_item, hist_cate]}]",
        "features.pooled=[user]", "features.dense=[d0, d1]", "model.embedding_dim=8",
        "train.progress=false", "train.device=cpu"])
    source = SimpleNamespace(vocab={"item": 50, "cate": 7, "user": 20}, shared_histories=False,
                             meta={}, summary=lambda: {"train": {"mean_history": 3.0}})
    first, second = toy_batch([3, 0, 5, 1], seed=1), toy_batch([2, 4, 1, 0], seed=2)
    with ShardedBackend(config) as backend:
        backend.setup(config, source, {}, str(tmp_path))
        # The tables are the fused optimizer's, not the dense one's: no state of table size
        # beyond row-wise Adagrad's one float per row.
        dense = {id(p) for g in backend.dense_opt.param_groups for p in g["params"]}
        assert not any(id(p) in dense for n, p in backend.dmp.named_parameters()
                       if "embedding" in n)
        momentum = {k: v for k, v in backend.dmp.fused_optimizer.state_dict()["state"].items()
                    if "item" in k}
        assert momentum, backend.dmp.fused_optimizer.state_dict()["state"].keys()
        start = _tables(backend)
        steps = list(backend.train_batches([first]))
        after_first = _tables(backend)
        steps += list(backend.train_batches([second]))
        after_second = _tables(backend)
    assert len(steps) == 2 and all(torch.isfinite(loss) for loss, _ in steps)

    def looked_up(batch, keys) -> torch.Tensor:
        return torch.unique(torch.cat([batch.sequence_features[k].values() for k in keys]))

    first_rows = looked_up(first, ["item", "hist_item"])
    second_rows = looked_up(second, ["item", "hist_item"])
    assert not torch.equal(after_first[ITEM][first_rows], start[ITEM][first_rows])
    # Rows the second batch did not look up keep their values through its step: no
    # momentum carries an update into them (dense Adam would move every row touched before).
    only_first = first_rows[~torch.isin(first_rows, second_rows)]
    assert only_first.numel() > 0
    assert torch.equal(after_second[ITEM][only_first], after_first[ITEM][only_first])
    never = torch.ones(50, dtype=torch.bool)
    never[torch.cat([first_rows, second_rows])] = False
    assert torch.equal(after_second[ITEM][never], start[ITEM][never])
    assert not torch.equal(after_second[ITEM][second_rows], after_first[ITEM][second_rows])
