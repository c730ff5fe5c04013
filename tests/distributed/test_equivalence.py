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


def _dice_ranks(rank, world_size, sync):
    from torchrec_din.distributed import statistics_buffers, sync_buffers

    with MultiProcessContext(rank, world_size, "gloo", use_deterministic_algorithms=False) as ctx:
        torch.manual_seed(0)
        ec, ebc = toy_collections()
        model = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2,
                             attention_activation="dice", over_arch_activation="dice"))
        sharders = make_sharders("sgd", LR)
        plan = manual_plan(model, {"item": "row_wise", "cate": "table_wise",
                                   "user": "table_wise"}, world_size, sharders)
        dmp = shard(model, plan, sharders, ctx.pg)
        opt = torch.optim.SGD([p for _, p in dense_parameters(dmp)], lr=LR)
        for step in range(STEPS):
            loss, _ = dmp(_batches(step)[rank])  # each rank its own data
            opt.zero_grad()
            loss.backward()
            opt.step()
        before = [b.clone() for b in statistics_buffers(dmp)]
        count = sync_buffers(dmp) if sync else 0
        after = [b.clone() for b in statistics_buffers(dmp)]
        dmp.eval()
        with torch.no_grad():
            logits = dmp(_batches(STEPS)[0])[1][1].detach()  # the same batch on both ranks
        state = gather_state_dict(dmp)
        return count, before, after, logits, state


@pytest.mark.parametrize("sync", [True, False])
def test_dice_statistics_agree_across_ranks_after_sync(sync) -> None:
    results = run_multi_process_func(_dice_ranks, world_size=2, sync=sync,
                                     use_deterministic_algorithms=False)
    (count, before0, after0, logits0, state), (_, before1, after1, logits1, _) = results
    assert len(before0) == 8  # four Dice layers (attention 2, over arch 2): mean and var
    differs = any(not torch.equal(a, b) for a, b in zip(before0, before1))
    assert differs  # rank-local batches moved the statistics apart
    # The gathered model, unsharded, scores the batch as every rank's sharded model does.
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    single = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2,
                          attention_activation="dice", over_arch_activation="dice"))
    single.load_state_dict(state)
    single.eval()
    with torch.no_grad():
        expected = single(_batches(STEPS)[0])[1][1]
    if sync:
        assert count == 8
        for a, b, x, y in zip(after0, after1, before0, before1):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            torch.testing.assert_close(a, (x.double() + y.double()).div(2).float())
        torch.testing.assert_close(logits0, logits1, rtol=0, atol=0)
        torch.testing.assert_close(logits1, expected, rtol=1e-5, atol=1e-6)
    else:  # what the sync fixes: rank 1 is not the model that is saved
        torch.testing.assert_close(logits0, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(logits1, expected, rtol=1e-5, atol=1e-6)


def _mba(model):
    import numpy as np

    from torchrec_din.train.regularization import MiniBatchAwareL2, table_features

    features, rows, pooled = table_features(model.model)
    freq = {t: np.arange(1, n + 1, dtype=float) for t, n in rows.items()}
    return MiniBatchAwareL2(features, freq, 0.7, pooled)


def _mba_sharded(rank, world_size, initial):
    from torchrec_din.train.regularization import MBAPenalty

    with MultiProcessContext(rank, world_size, "gloo", use_deterministic_algorithms=False) as ctx:
        torch.manual_seed(0)
        ec, ebc = toy_collections()
        model = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2))
        mba = _mba(model)
        sharders = make_sharders("sgd", LR)
        plan = manual_plan(model, {"item": "row_wise", "cate": "column_wise",
                                   "user": "table_wise"}, world_size, sharders)
        dmp = shard(model, plan, sharders, ctx.pg)
        load_full_state_dict(dmp, initial)
        dmp.module.penalty = MBAPenalty(mba)  # rows from the sharded lookups
        opt = torch.optim.SGD([p for _, p in dense_parameters(dmp)], lr=LR)
        losses = []
        for step in range(STEPS):
            loss, _ = dmp(_batches(step)[rank])
            losses.append(float(loss))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return losses, gather_state_dict(dmp)


def test_sharded_mba_matches_unsharded() -> None:
    """MBA on sharded tables (row-, column- and table-wise): each rank's penalty on its
    batch, gradients through the lookups, equals the unsharded model trained on the mean of
    the ranks' losses with the penalty taken from the tables' weights."""
    from torchrec_din.train.regularization import MBAPenalty, table_weights

    torch.manual_seed(0)
    ec, ebc = toy_collections()
    model = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2))
    initial = copy.deepcopy(model.state_dict())
    model.penalty = MBAPenalty(_mba(model), table_weights(model.model))
    plain = copy.deepcopy(model)
    plain.penalty = None
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    ref_losses = [[], []]
    for step in range(STEPS):
        losses = [model(b)[0] for b in _batches(step)]
        for r in range(2):
            ref_losses[r].append(float(losses[r].detach()))
        opt.zero_grad()
        (sum(losses) / len(losses)).backward()
        opt.step()
    # The penalty is a real term: without it the first losses differ.
    assert float(plain(_batches(0)[0])[0]) < ref_losses[0][0] - 1e-4
    results = run_multi_process_func(_mba_sharded, world_size=2, initial=initial,
                                     use_deterministic_algorithms=False)
    for rank, (losses, _) in enumerate(results):
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses[rank]),
                                   rtol=1e-5, atol=1e-6)
    state, final = results[0][1], model.state_dict()
    for key in ("model.embedding_collection.embeddings.item.weight",
                "model.embedding_collection.embeddings.cate.weight",
                "model.embedding_bag_collection.embedding_bags.user.weight"):
        torch.testing.assert_close(state[key], final[key], rtol=1e-4, atol=1e-6, msg=key)
