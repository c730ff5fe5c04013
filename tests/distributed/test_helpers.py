"""The sharding helpers work on any module holding TorchRec collections."""

import pytest
from torch import nn

from torchrec_din.distributed import find_collections, make_sharders, manual_plan
from torchrec_din.testing.toy import toy_collections


class MyRanker(nn.Module):
    """Collections at arbitrary paths, as a user's own model would hold them."""

    def __init__(self) -> None:
        super().__init__()
        ec, ebc = toy_collections()
        self.sparse_arch = nn.ModuleDict({"sequences": ec})
        self.user_tower = nn.Sequential(ebc)


def test_manual_plan_walks_any_module() -> None:
    model = MyRanker()
    assert sorted(find_collections(model)) == ["sparse_arch.sequences", "user_tower.0"]
    sharders = make_sharders("sgd", 0.1)
    plan = manual_plan(model, {"item": "row_wise", "user": "data_parallel"}, 2, sharders)
    seq = plan.plan["sparse_arch.sequences"]
    assert seq["item"].sharding_type == "row_wise" and seq["cate"].sharding_type == "table_wise"
    assert all(p.compute_kernel == "fused" for p in seq.values())
    assert plan.plan["user_tower.0"]["user"].sharding_type == "data_parallel"
    with pytest.raises(ValueError, match=r"tables \['items'\] that are not in the model"):
        manual_plan(model, {"items": "row_wise"}, 2, sharders)
    with pytest.raises(ValueError, match="data_parallel is not supported for EmbeddingCollection"):
        manual_plan(model, {"item": "data_parallel"}, 2, sharders)
    with pytest.raises(ValueError, match="holds no EmbeddingCollection"):
        manual_plan(nn.Linear(2, 2), {}, 2, sharders)


def test_optimizer_checked_against_the_device_when_sharders_are_made() -> None:
    with pytest.raises(ValueError, match=r"for embedding tables on cpu .*got 'adam'"):
        make_sharders("adam", 0.01, device_type="cpu")
    assert len(make_sharders("adam", 0.01, device_type="cuda")) == 2
    with pytest.raises(ValueError, match="got 'adamw'"):
        make_sharders("adamw", 0.01, device_type="cuda")
