"""On a CUDA GPU: the attention, the model's training step and the grouped scorer give the
CPU's results (run by benchmarks/gpu_check.sh; skipped where no GPU is visible)."""

import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din import JaggedTargetAttention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("activation,normalization", [("dice", "softmax"), ("sigmoid", "none")])
def test_attention_forward_backward_on_cuda_equals_cpu(activation, normalization) -> None:
    torch.manual_seed(0)
    attn = JaggedTargetAttention(16, activation=activation, normalization=normalization,
                                 validate_inputs=False)
    lengths = torch.tensor([3, 0, 5, 1, 9])
    query = torch.randn(5, 16, requires_grad=True)
    values = torch.randn(int(lengths.sum()), 16, requires_grad=True)
    out = attn(query, JaggedTensor(values=values, lengths=lengths))
    out.sum().backward()
    gpu = JaggedTargetAttention(16, activation=activation, normalization=normalization,
                                validate_inputs=False, device=CUDA)
    gpu.load_state_dict(attn.state_dict())
    q, v = query.detach().to(CUDA).requires_grad_(), values.detach().to(CUDA).requires_grad_()
    out_gpu = gpu(q, JaggedTensor(values=v, lengths=lengths.to(CUDA)))
    out_gpu.sum().backward()
    torch.testing.assert_close(out_gpu.cpu(), out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q.grad.cpu(), query.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v.grad.cpu(), values.grad, rtol=1e-4, atol=1e-5)


def test_training_step_and_scorer_on_cuda_equal_cpu() -> None:
    import copy

    from torchrec_din import DIN, DINTrain
    from torchrec_din.serve import DINScorer
    from torchrec_din.serve.export import example_request
    from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections

    torch.manual_seed(0)
    ec, ebc = toy_collections()
    cpu = DIN(ec, TOY_GROUPS, ebc, dense_in_features=2, attention_activation="dice")
    gpu = copy.deepcopy(cpu).to(CUDA)
    batch = toy_batch([3, 0, 5, 2])
    loss, _ = DINTrain(cpu)(batch)
    loss.backward()
    loss_gpu, _ = DINTrain(gpu)(batch.to(CUDA))
    loss_gpu.backward()
    torch.testing.assert_close(loss_gpu.cpu(), loss, rtol=1e-4, atol=1e-5)
    for (name, p), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p.grad, rtol=1e-3, atol=1e-5, msg=name)
    cpu.eval()
    gpu.eval()
    scorer = DINScorer(cpu).eval()
    with torch.no_grad():
        request = example_request(scorer)
        expected = scorer(*request)
        got = DINScorer(gpu).eval()(*example_request(scorer, CUDA))
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)
