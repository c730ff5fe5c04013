"""Models built on the meta device and materialised by DistributedModelParallel (TorchRec's
way) start as the eager build does: every module that owns parameters or buffers
initialises itself through ``reset_parameters()``.

Equality tests that load one state into both the sharded and the unsharded model cannot see
a broken start; these compare a model's own start with the eager one's.
"""

import copy
from typing import Any, Callable, Dict, List

import pytest
import torch
from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.test_utils.multi_process import MultiProcessContext, run_multi_process_func

from torchrec_din.build import build_model
from torchrec_din.config import DEFAULTS
from torchrec_din.distributed import gather_state_dict, make_sharders, planner_constraints, shard
from torchrec_din.models import DINTrain
from conftest import load_example

VOCAB = {"item": 60, "cate": 7, "user": 30, "age": 7, "gender": 2, "occupation": 21}
TWO_GROUPS = [{"name": "items", "candidate": ["item"], "history": ["hist_item"]},
              {"name": "cates", "candidate": ["cate"], "history": ["hist_cate"]}]

# Every model the config can name: each attention and over-arch activation, both
# normalisations, the outer product (as GEMM columns, D <= 24, and as the bilinear form,
# D = 32), BaseModel, several groups.
CONFIG_VARIANTS: Dict[str, Dict[str, Any]] = {
    "din_dice_softmax": {"attention_activation": "dice", "attention_normalization": "softmax",
                         "embedding_dim": 16},
    "din_sigmoid_over_dice": {"attention_activation": "sigmoid", "over_arch_activation": "dice"},
    "din_prelu_outer_gemm": {"attention_activation": "prelu", "use_outer_product": True,
                             "embedding_dim": 8},
    "din_relu_outer_bmm_over_dice": {"attention_activation": "relu", "use_outer_product": True,
                                     "embedding_dim": 32, "over_arch_activation": "dice"},
    "base_over_dice": {"name": "base", "over_arch_activation": "dice"},
    "din_dice_two_groups": {"attention_activation": "dice", "groups": TWO_GROUPS},
}


def _config_model(variant: str) -> Callable[[torch.device], nn.Module]:
    def make(device: torch.device) -> nn.Module:
        config = copy.deepcopy(DEFAULTS)
        spec = dict(CONFIG_VARIANTS[variant])
        if "groups" in spec:
            config["features"]["groups"] = spec.pop("groups")
        config["model"].update(spec)
        return DINTrain(build_model(VOCAB, config, device=device))
    return make


def _own_model(device: torch.device) -> nn.Module:
    # The README's "your own model": DINInteraction (Dice, softmax) inside a user's ranker.
    return load_example("your_own_model").MyRanker(device=device)


def _builders() -> Dict[str, Callable[[torch.device], nn.Module]]:
    out = {name: _config_model(name) for name in CONFIG_VARIANTS}
    out["your_own_model"] = _own_model
    return out


def _eager_states(make: Callable[[torch.device], nn.Module],
                  seeds: List[int]) -> List[Dict[str, torch.Tensor]]:
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        states.append({k: v.detach().clone() for k, v in make(torch.device("cpu"))
                       .state_dict().items()})
    return states


def _materialised_state(rank: int, world_size: int, variant: str) -> Dict[str, torch.Tensor]:
    with MultiProcessContext(rank, world_size, "gloo", use_deterministic_algorithms=False) as ctx:
        torch.manual_seed(0)
        model = _builders()[variant](torch.device("meta"))
        sharders = make_sharders("rowwise_adagrad", 0.05, "cpu")
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world_size, compute_device="cpu"),
            constraints=planner_constraints(model, compute_device="cpu"))
        plan = planner.collective_plan(model, sharders, ctx.pg)
        dmp = shard(model, plan, sharders, ctx.pg)
        return gather_state_dict(dmp)


@pytest.fixture(autouse=True)
def _own_environment(monkeypatch):
    # TorchRec's MultiProcessContext leaves LOCAL_RANK / LOCAL_WORLD_SIZE in os.environ when
    # it runs a 1-rank world in this process: keep them from the tests that come after.
    for key in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)


def _check(variant: str) -> None:
    eager = _eager_states(_builders()[variant], seeds=[0, 1, 2, 3])
    (materialised,) = run_multi_process_func(_materialised_state, world_size=1,
                                             variant=variant,
                                             use_deterministic_algorithms=False)
    assert set(materialised) == set(eager[0]), (
        f"{variant}: keys differ: {sorted(set(materialised) ^ set(eager[0]))}")
    problems = []
    for key, reference in eager[0].items():
        got = materialised[key].float()
        if all(torch.equal(reference, other[key]) for other in eager[1:]):
            # Deterministic at init (Dice's alpha and statistics, PReLU slopes): equal.
            if not torch.equal(got, reference.float()):
                problems.append(f"{key}: {got.flatten()[:4].tolist()} instead of "
                                f"{reference.flatten()[:4].tolist()}")
            continue
        # Random at init: finite, within the envelope of several eager draws, and (for
        # tensors large enough to measure it) of the eager spread.
        if not torch.isfinite(got).all():
            problems.append(f"{key}: not finite")
            continue
        # A few draws of a tiny tensor (a 1-element bias) say little about its range: there
        # the bound is that of any fan-in initialisation, 1 (garbage memory is far beyond).
        envelope = (max(float(s[key].abs().max()) for s in eager) if got.numel() >= 64
                    else 1.0 / 1.5)
        if float(got.abs().max()) > 1.5 * envelope:
            problems.append(f"{key}: max |x| {float(got.abs().max()):.3g} beyond the eager "
                            f"draws' {envelope:.3g}")
        if got.numel() >= 64:
            ratio = float(got.std()) / float(reference.float().std())
            if not 0.5 < ratio < 2.0:
                problems.append(f"{key}: std {float(got.std()):.3g} vs eager "
                                f"{float(reference.float().std()):.3g}")
    assert not problems, f"{variant} built on meta and materialised by DMP:\n" + "\n".join(problems)


def test_every_config_variant_starts_as_the_eager_build() -> None:
    for variant in CONFIG_VARIANTS:
        _check(variant)


def test_own_model_with_din_interaction_starts_as_the_eager_build() -> None:
    _check("your_own_model")


def test_dice_reset_parameters_restores_the_fresh_state() -> None:
    from torchrec_din.modules.activation import Dice

    dice = Dice(5)
    with torch.no_grad():
        dice.alpha.fill_(3.0)
        dice.running_mean.fill_(7.0)
        dice.running_var.zero_()
    dice.reset_parameters()
    assert torch.equal(dice.alpha, torch.zeros(5))
    assert torch.equal(dice.running_mean, torch.zeros(5))
    assert torch.equal(dice.running_var, torch.ones(5))
