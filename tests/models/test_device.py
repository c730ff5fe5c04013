"""Device placement without a GPU: the model (collections, interaction, over arch) runs on
fake CUDA tensors (FakeTensorMode), where any tensor made without ``device=`` (a stray
``torch.arange`` on the CPU) mixes devices and raises."""

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.checks import set_validate_inputs
from torchrec_din.build import build_model
from torchrec_din.config import load_config, resolve_device

# TorchRec's KJT and FakeTensorMode need a CUDA build of torch to make fake CUDA tensors
# (the default environment's torch 2.14.1 is one; the CPU-only floor build aborts).
needs_cuda_build = pytest.mark.skipif(not torch.backends.cuda.is_built(),
                                      reason="fake CUDA tensors need a CUDA build of torch")
CUDA = torch.device("cuda")


def _to_fake_cuda(model: nn.Module) -> None:
    """Replace every parameter and buffer by a fake CUDA tensor of the same shape (inside
    the active FakeTensorMode): what ``model.to('cuda')`` would give on a GPU machine."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(
                    torch.empty(p.shape, dtype=p.dtype, device=CUDA), p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=CUDA)


def _kjt(keys, lengths_per_key, stride):
    lengths = torch.tensor(sum(lengths_per_key, []), device=CUDA)
    per_key = [sum(x) for x in lengths_per_key]
    # length_per_key given: TorchRec then needs no host copy of the lengths (a fake tensor
    # has no data to copy).
    return KeyedJaggedTensor(keys=keys, values=torch.zeros(sum(per_key), dtype=torch.long,
                                                           device=CUDA),
                             lengths=lengths, stride=stride, length_per_key=per_key)


@needs_cuda_build
@pytest.mark.parametrize("overrides", [
    ["model.attention_activation=dice", "model.over_arch_activation=dice"],
    ["model.attention_normalization=softmax", "model.use_outer_product=true",
     "model.attention_activation=prelu"],
    ["model.name=base"],
])
def test_forward_stays_on_the_model_device(overrides) -> None:
    config = load_config(None, ["model.embedding_dim=8", "features.pooled=[user]",
                                "features.dense=[]"] + overrides)
    model = build_model({"item": 50, "cate": 7, "user": 20}, config)
    set_validate_inputs(model, False)  # value checks read data; fake tensors have none
    model.validate_inputs = False
    with FakeTensorMode(shape_env=ShapeEnv()):
        _to_fake_cuda(model)
        keys = ["item", "cate", "hist_item", "hist_cate"]
        seq = _kjt(keys, [[1, 1, 1], [1, 1, 1], [3, 0, 2], [3, 0, 2]], 3)
        pooled = _kjt(["user"], [[1, 1, 1]], 3)
        dense = torch.zeros(3, 0, device=CUDA)
        out = model(seq, pooled, dense)
        assert out.device.type == "cuda" and out.shape == (3,)
        # (The grouped form reads its pair count on the host; on fake tensors that count is
        # symbolic, which eager meta kernels such as addcmul's refuse, so it is not run here.)
        # The failure this test exists for: a tensor made on the CPU inside the forward.
        with pytest.raises(RuntimeError, match="same device|cuda.*cpu|cpu.*cuda"):
            model.final(torch.zeros(3, model.final.in_features)) + out[:3]


def test_device_names_are_resolved_or_refused() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            resolve_device("cuda")
