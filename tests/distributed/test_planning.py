import re

import pytest

from torchrec_din.cli import main
from torchrec_din.planning import plan_for_config
from torchrec_din.config import load_config

VOCAB = {"item": 1683, "cate": 20, "user": 944, "age": 8, "gender": 3, "occupation": 22}


def test_plan_command_for_64_gpus_and_a_billion_items(capsys) -> None:
    assert main(["plan", "--config", "configs/movielens_din.yaml", "--world-size", "64",
                 "--compute-device", "cuda", "--set", "tables.item.num_embeddings=1000000000"]) == 0
    out = capsys.readouterr().out
    assert "Planner Statistics" in out and "HBM (GB)" in out
    # the billion-row item table is split over all 64 ranks
    assert out.count("rank:63/cuda:7") >= 1
    assert "embedding_collection.item" in out


def test_cpu_plan_respects_cpu_constraints() -> None:
    config = load_config("configs/movielens_din.yaml")
    plan = plan_for_config(config, VOCAB, world_size=2, compute_device="cpu")
    seq = plan.plan["embedding_collection"]
    for table, sharding in seq.items():
        assert sharding.compute_kernel == "fused", table
        assert sharding.sharding_type != "data_parallel", table


def test_per_table_choices_from_config() -> None:
    config = load_config("configs/movielens_din.yaml", [
        "tables.item.sharding_types=[column_wise]", "tables.item.num_embeddings=5000000"])
    plan = plan_for_config(config, VOCAB, world_size=4, compute_device="cuda")
    assert plan.plan["embedding_collection"]["item"].sharding_type == "column_wise"
    # An unknown table is refused when the config loads, before any plan is made.
    with pytest.raises(ValueError, match=r"tables.items: no table 'items' in the feature "
                                         r"schema"):
        load_config("configs/movielens_din.yaml", ["tables.items.num_embeddings=5"])


def _column(out: str, row_prefix: str, column: str) -> str:
    rows = [line.strip("# ").strip() for line in out.splitlines()]
    header = next(re.split(r"\s{2,}", r) for r in rows if column in r and "FQN" in r)
    row = next(re.split(r"\s{2,}", r) for r in rows if r.startswith(row_prefix))
    return row[header.index(column)]


def test_plan_command_counts_history_lookups(capsys) -> None:
    # The planner sees each history feature's mean length, not one id per sample: the item
    # table's pooling factor is 1 (candidate) + the training split's mean history length.
    assert main(["plan", "--config", "configs/movielens_din.yaml", "--world-size", "2",
                 "--compute-device", "cuda"]) == 0
    out = capsys.readouterr().out
    factor = float(_column(out, "embedding_collection.item", "Sum Pooling Factor"))
    assert factor > 20, out[-2000:]
    assert float(_column(out, "embedding_bag_collection.user", "Sum Pooling Factor")) == 1.0


def test_constraints_carry_pooling_factors_for_any_model() -> None:
    from torch import nn
    from torchrec_din.distributed import planner_constraints
    from torchrec_din.testing.toy import toy_collections

    class MyRanker(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sparse = nn.ModuleDict(dict(zip(["ec", "ebc"], toy_collections())))

    c = planner_constraints(MyRanker(), {"hist_item": 37.5, "hist_cate": 37.5}, "cpu")
    assert c["item"].pooling_factors == [1.0, 37.5]
    assert c["item"].compute_kernels == ["fused"] and "data_parallel" not in c["item"].sharding_types
    assert c["user"].pooling_factors == [1.0]
    with pytest.raises(ValueError, match=r"names features \['hist_brand'\]"):
        planner_constraints(MyRanker(), {"hist_brand": 3.0})
