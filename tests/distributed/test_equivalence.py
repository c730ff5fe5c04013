"""Sharded DIN (2 ranks, gloo) against the unsharded DIN: same start, same data, same steps."""

import copy

import pytest
import torch
from torchrec.distributed.test_utils.multi_process import MultiProcessContext, run_multi_process_func

from torchrec_din import DIN, DINTrain
from torchrec_din.distributed import (
    dense_parameters,
    gather_state_dict,
    load_full_state_dict,
    make_sharders,
    manual_plan,
    shard,
)
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections

LR, STEPS = 0.05, 3
LENGTHS = [[3, 0, 5, 1], [2, 7, 0, 1]]  # per rank


def _batches(step):
    return [toy_batch(LENGTHS[r], seed=100 * step + r) for r in range(2)]


def _reference():
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    model = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2))
    initial = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        losses = [model(b)[0] for b in _batches(step)]
        opt.zero_grad()
        (sum(losses) / len(losses)).backward()  # equal local batches: the mean over ranks
        opt.step()
    logits = [model(b)[1][1].detach() for b in _batches(STEPS)]
    return initial, model.state_dict(), logits


def _sharded(rank, world_size, item_sharding, pooled_sharding, initial):
    with MultiProcessContext(rank, world_size, "gloo", use_deterministic_algorithms=False) as ctx:
        torch.manual_seed(0)
        ec, ebc = toy_collections()
        model = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2))
        sharders = make_sharders("sgd", LR)
        plan = manual_plan(model, {"item": item_sharding, "cate": "table_wise",
                                   "user": pooled_sharding}, world_size, sharders)
        dmp = shard(model, plan, sharders, ctx.pg)
        load_full_state_dict(dmp, initial)
        opt = torch.optim.SGD([p for _, p in dense_parameters(dmp)], lr=LR)
        for step in range(STEPS):
            loss, _ = dmp(_batches(step)[rank])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = dmp(_batches(STEPS)[rank])[1][1].detach()
        state = gather_state_dict(dmp)
        return logits, state


@pytest.mark.parametrize("item_sharding,pooled_sharding", [
    ("table_wise", "table_wise"),
    ("row_wise", "data_parallel"),
    ("column_wise", "table_wise"),
])
def test_sharded_matches_unsharded(item_sharding, pooled_sharding) -> None:
    initial, final, ref_logits = _reference()
    results = run_multi_process_func(_sharded, world_size=2, item_sharding=item_sharding,
                                     pooled_sharding=pooled_sharding, initial=initial,
                                     use_deterministic_algorithms=False)
    for rank, (logits, _) in enumerate(results):
        torch.testing.assert_close(logits, ref_logits[rank], rtol=1e-4, atol=1e-5)
    state = results[0][1]
    for key in ("model.embedding_collection.embeddings.item.weight",
                "model.embedding_collection.embeddings.cate.weight",
                "model.embedding_bag_collection.embedding_bags.user.weight"):
        assert not torch.equal(initial[key], final[key]), f"{key} did not train"
        torch.testing.assert_close(state[key], final[key], rtol=1e-4, atol=1e-6, msg=key)
