import pytest

from torchrec_din.cli import main
from torchrec_din.distributed.planning import plan_for_config
from torchrec_din.train.config import load_config

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
    bad = load_config("configs/movielens_din.yaml", ["tables.items.num_embeddings=5"])
    with pytest.raises(ValueError, match=r"tables \['items'\] are not in the model"):
        plan_for_config(bad, VOCAB, world_size=4)
