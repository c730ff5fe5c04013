import pytest
import torch
from torch import nn

from torchrec_din import Dice
from torchrec_din.modules import make_activation


def _paper_dice(x, mean, var, alpha, eps):
    p = torch.sigmoid((x - mean) / torch.sqrt(var + eps))
    return p * x + (1 - p) * alpha * x


def test_training_uses_batch_statistics() -> None:
    torch.manual_seed(0)
    dice = Dice(5)
    with torch.no_grad():
        dice.alpha.uniform_(-1, 1)
    x = torch.randn(64, 5) * 3 + 1
    expected = _paper_dice(x, x.mean(0), x.var(0, unbiased=False), dice.alpha, 1e-8)
    torch.testing.assert_close(dice(x), expected)
    # Running statistics moved 10% of the way from (0, 1) towards the batch's.
    torch.testing.assert_close(dice.running_mean, 0.1 * x.mean(0))
    torch.testing.assert_close(dice.running_var, 0.9 + 0.1 * x.var(0, unbiased=False))


def test_matches_batchnorm_normalisation() -> None:
    torch.manual_seed(1)
    x = torch.randn(32, 4)
    bn = nn.BatchNorm1d(4, eps=1e-8, affine=False)
    dice = Dice(4)
    p = torch.sigmoid(bn(x))
    torch.testing.assert_close(dice(x), p * x, rtol=1e-5, atol=1e-6)  # alpha = 0


def test_eval_uses_running_statistics_and_rows_are_independent() -> None:
    dice = Dice(3)
    dice.train()
    for _ in range(20):
        dice(torch.randn(50, 3) * 2 + 4)
    dice.eval()
    x = torch.randn(10, 3)
    full = dice(x)
    expected = _paper_dice(x, dice.running_mean, dice.running_var, dice.alpha, 1e-8)
    torch.testing.assert_close(full, expected)
    torch.testing.assert_close(dice(x[3:4]), full[3:4])


def test_one_row_and_empty_batches_in_training() -> None:
    dice = Dice(3)
    x = torch.tensor([[1.0, -2.0, 3.0]])
    # One row: it is its own mean, p = 0.5.
    torch.testing.assert_close(dice(x), 0.5 * x)
    before = dice.running_mean.clone(), dice.running_var.clone()
    out = dice(torch.zeros(0, 3))
    assert out.shape == (0, 3)
    torch.testing.assert_close(dice.running_mean, before[0])
    torch.testing.assert_close(dice.running_var, before[1])


def test_gradients_flow_to_alpha() -> None:
    dice = Dice(2)
    dice(torch.randn(8, 2)).sum().backward()
    assert dice.alpha.grad is not None and torch.all(dice.alpha.grad != 0)


def test_gradients_equal_the_paper_formula_with_batch_statistics() -> None:
    torch.manual_seed(2)
    dice = Dice(6)
    with torch.no_grad():
        dice.alpha.uniform_(-1, 1)
    x = (torch.randn(40, 6) * 2 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    alpha_ref = dice.alpha.detach().clone().requires_grad_()
    grad = torch.randn(40, 6)
    dice(x).backward(grad)
    _paper_dice(x_ref, x_ref.mean(0), x_ref.var(0, unbiased=False), alpha_ref,
                1e-8).backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dice.alpha.grad, alpha_ref.grad, rtol=1e-4, atol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_features > 0"):
        Dice(0)
    with pytest.raises(ValueError, match="activation must be one of"):
        make_activation("swish", 3)
