"""The README's mixed-dim recipe (examples/mixed_dims.py: item 32 + category 8 from two
collections, merged with DINInteraction.merge, fed by a FeatureBatch) trained by
TrainPipelineSparseDist on 2 ranks equals the unsharded model trained on the same batches."""

import copy
import os
import re

import torch
from torchrec.distributed.test_utils.multi_process import MultiProcessContext, run_multi_process_func
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_din.distributed import (
    dense_parameters,
    gather_state_dict,
    load_full_state_dict,
    make_sharders,
    manual_plan,
    shard,
)

from conftest import load_example  # tests/conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LR, STEPS = 0.05, 4
LENGTHS = [(3, 0, 5, 1, 12, 2), (0, 7, 1, 0, 2, 9)]  # per rank: empty histories included


def _batch(example, step, rank):
    return example.make_batch(LENGTHS[rank], seed=100 * step + rank)


def _sharded(rank, world_size, initial):
    example = load_example("mixed_dims")
    with MultiProcessContext(rank, world_size, "gloo", use_deterministic_algorithms=False) as ctx:
        torch.manual_seed(0)
        model = example.MixedDimRanker()
        sharders = make_sharders("sgd", LR)
        plan = manual_plan(model, {"item": "row_wise", "cate": "column_wise",
                                   "user": "table_wise"}, world_size, sharders)
        dmp = shard(model, plan, sharders, ctx.pg)
        load_full_state_dict(dmp, initial)
        opt = torch.optim.SGD([p for _, p in dense_parameters(dmp)], lr=LR)
        pipeline = TrainPipelineSparseDist(dmp, opt, torch.device("cpu"))
        it = iter([_batch(example, step, rank) for step in range(STEPS)])
        losses = [float(pipeline.progress(it)[0]) for _ in range(STEPS)]
        pipeline.detach()
        with torch.no_grad():
            logits = dmp(_batch(example, STEPS, rank))[1][1]
        return losses, logits, gather_state_dict(dmp)


def test_mixed_dim_recipe_under_the_pipeline_equals_unsharded() -> None:
    example = load_example("mixed_dims")
    torch.manual_seed(0)
    model = example.MixedDimRanker()
    assert model.din.candidate_dim == 40 and model.din.output_dim == 40
    initial = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    ref_losses = [[], []]
    for step in range(STEPS):
        losses = [model(_batch(example, step, r))[0] for r in range(2)]
        for r in range(2):
            ref_losses[r].append(float(losses[r].detach()))
        opt.zero_grad()
        (sum(losses) / 2).backward()  # DDP and TorchRec average the ranks' gradients
        opt.step()
    with torch.no_grad():
        ref_logits = [model(_batch(example, STEPS, r))[1][1] for r in range(2)]

    results = run_multi_process_func(_sharded, world_size=2, initial=initial,
                                     use_deterministic_algorithms=False)
    for rank, (losses, logits, _) in enumerate(results):
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses[rank]),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits, ref_logits[rank], rtol=1e-4, atol=1e-5)
    state, final = results[0][2], model.state_dict()
    for key in ("ec_items.embeddings.item.weight", "ec_cates.embeddings.cate.weight",
                "ebc.embedding_bags.user.weight", "final.weight"):
        assert not torch.equal(initial[key], final[key]), f"{key} did not train"
        torch.testing.assert_close(state[key], final[key], rtol=1e-4, atol=1e-6, msg=key)


def test_the_readme_recipe_is_the_tested_one() -> None:
    """Every line of the README's mixed-dim code block is a line of the example's model."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"<!-- mixed-dims recipe -->\n```python\n(.*?)```", readme, re.S)
    assert block, "README: the mixed-dims recipe block is missing"
    source = {line.strip() for line in open(os.path.join(ROOT, "examples", "mixed_dims.py"))}
    lines = [ln.strip() for ln in block.group(1).splitlines()
             if ln.strip() and not ln.strip().startswith(("#", "from ", "import ", "..."))]
    assert len(lines) >= 10
    missing = [ln for ln in lines if ln not in source]
    assert not missing, f"README lines not in examples/mixed_dims.py: {missing}"
