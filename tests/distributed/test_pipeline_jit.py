"""TrainPipelineSparseDist(apply_jit=True) trains the TorchScripted DIN part, and its losses
equal the eager pipeline's (2 ranks, gloo)."""

import torch
from torchrec.distributed.test_utils.multi_process import MultiProcessContext, run_multi_process_func
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_din import DIN, DINTrain
from torchrec_din.distributed import (
    dense_parameters,
    make_sharders,
    manual_plan,
    shard,
    use_pipeline_jit_model,
)
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections

STEPS = 5


def _train(rank, world_size, apply_jit):
    with MultiProcessContext(rank, world_size, "gloo", use_deterministic_algorithms=False) as ctx:
        torch.manual_seed(0)
        ec, ebc = toy_collections()
        model = DINTrain(DIN(ec, TOY_GROUPS, ebc, dense_in_features=2,
                             attention_activation="dice", attention_normalization="softmax",
                             validate_inputs=False))
        sharders = make_sharders("sgd", 0.05)
        dmp = shard(model, manual_plan(model, {"item": "row_wise"}, world_size, sharders),
                    sharders, ctx.pg)
        opt = torch.optim.SGD([p for _, p in dense_parameters(dmp)], lr=0.05)
        pipeline = TrainPipelineSparseDist(dmp, opt, torch.device("cpu"), apply_jit=apply_jit)
        batches = iter([toy_batch([3, 0, 5, 1, 2], seed=10 * step + rank)
                        for step in range(STEPS)])
        losses = []
        for _ in range(STEPS):
            losses.append(float(pipeline.progress(batches)[0]))
            use_pipeline_jit_model(dmp)
        interaction = dmp.module.model.interaction
        return losses, isinstance(interaction, torch.jit.ScriptModule), sorted(dmp.state_dict())


def test_jit_pipeline_runs_scripted_din_and_matches_eager() -> None:
    eager = run_multi_process_func(_train, world_size=2, apply_jit=False,
                                   use_deterministic_algorithms=False)
    jit = run_multi_process_func(_train, world_size=2, apply_jit=True,
                                 use_deterministic_algorithms=False)
    for rank in range(2):
        eager_losses, eager_scripted, eager_keys = eager[rank]
        jit_losses, jit_scripted, jit_keys = jit[rank]
        assert not eager_scripted and jit_scripted
        assert jit_keys == eager_keys  # no second copy of the weights
        assert eager_losses[-1] != eager_losses[0]
        torch.testing.assert_close(torch.tensor(jit_losses), torch.tensor(eager_losses),
                                   rtol=1e-5, atol=1e-6)
