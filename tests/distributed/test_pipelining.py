"""TrainPipelineSparseDist pipelines every sharded collection (2 gloo ranks): the input of
each collection traces straight to the batch, so its input distribution overlaps compute.

TorchRec says otherwise only through logging ("Module '...' will NOT be pipelined, due to
input modifications", "Sharded modules were not pipelined: ..."), so the test reads its log.
"""

import logging
from typing import Any, Callable, List

import torch
from torchrec.distributed.test_utils.multi_process import MultiProcessContext, run_multi_process_func
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_din import DIN, DINTrain
from torchrec_din.distributed import dense_parameters, make_sharders, manual_plan, shard
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections
from conftest import load_example

STEPS = 3


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _din_model() -> torch.nn.Module:
    ec, ebc = toy_collections()
    return DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2))


def _din_batches(rank: int) -> List[Any]:
    return [toy_batch([3, 0, 5, 1], seed=10 * step + rank) for step in range(STEPS)]


def _mixed_model() -> torch.nn.Module:
    return load_example("mixed_dims").MixedDimRanker()


def _mixed_batches(rank: int) -> List[Any]:
    example = load_example("mixed_dims")
    return [example.make_batch((3, 0, 5, 1), seed=10 * step + rank) for step in range(STEPS)]


def _own_model() -> torch.nn.Module:
    return load_example("your_own_model").MyRanker()


def _own_batches(rank: int) -> List[Any]:
    example = load_example("your_own_model")
    return [example.make_batch(8, torch.Generator().manual_seed(10 * step + rank))
            for step in range(STEPS)]


CASES = {"din": (_din_model, _din_batches), "mixed_dims": (_mixed_model, _mixed_batches),
         "your_own_model": (_own_model, _own_batches)}


def _pipeline_log(rank: int, world_size: int, case: str) -> List[str]:
    make_model, make_batches = CASES[case]
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        with MultiProcessContext(rank, world_size, "gloo",
                                 use_deterministic_algorithms=False) as ctx:
            torch.manual_seed(0)
            model = make_model()
            sharders = make_sharders("sgd", 0.05)
            dmp = shard(model, manual_plan(model, {}, world_size, sharders), sharders, ctx.pg)
            opt = torch.optim.SGD([p for _, p in dense_parameters(dmp)], lr=0.05)
            pipeline = TrainPipelineSparseDist(dmp, opt, torch.device("cpu"))
            it = iter(make_batches(rank))
            for _ in range(STEPS):
                assert torch.isfinite(pipeline.progress(it)[0]).all()
            pipeline.detach()
    finally:
        root.removeHandler(records)
        root.setLevel(previous)
    return [m for m in records.messages if "pipelined" in m]


def _check(case: str, collections: List[str]) -> None:
    for log in run_multi_process_func(_pipeline_log, world_size=2, case=case,
                                      use_deterministic_algorithms=False):
        refused = [m for m in log if "NOT be pipelined" in m or "were not pipelined" in m]
        assert not refused, refused
        for name in collections:
            assert f"Module '{name}' will be pipelined" in log, (name, log)


def test_din_train_pipelines_both_collections() -> None:
    _check("din", ["model.embedding_collection", "model.embedding_bag_collection"])


def test_feature_batch_and_own_model_pipeline_every_collection() -> None:
    _check("mixed_dims", ["ec_items", "ec_cates", "ebc"])
    _check("your_own_model", ["behaviours", "user_context"])
