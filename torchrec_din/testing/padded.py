"""The padded + masked formulation of DIN attention, as every other DIN computes it.

It exists only to check the jagged path against (tests) and to measure it against
(benchmarks). Given a :class:`JaggedTargetAttention`, it reuses that module's own parameters
on histories padded to ``max_len``: the full MLP runs on all B * T positions, padded scores
are zeroed (``normalization="none"``) or set to -inf before the softmax, and Dice takes its
statistics over real positions only (the correct masking; naive padded code includes the
padding).
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn, Tensor

from torchrec_din.modules.activation import Dice
from torchrec_din.modules.attention import JaggedTargetAttention


def jagged_to_padded(values: Tensor, lengths: Tensor, max_len: int) -> Tuple[Tensor, Tensor]:
    """Pad jagged rows [N, D] to [B, max_len, D]; also return the mask [B, max_len]."""
    batch = lengths.numel()
    mask = torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
    padded = values.new_zeros(batch, max_len, values.size(1))
    padded = padded.masked_scatter(mask.unsqueeze(-1), values)
    return padded, mask


def _masked_dice(dice: Dice, x: Tensor, mask: Tensor) -> Tensor:
    # Statistics over real positions only; updates the module's running averages like Dice.
    if dice.training:
        real = x[mask]
        count = real.size(0)
        mean = real.mean(0) if count > 0 else x.new_zeros(x.size(-1))
        var = real.var(0, unbiased=False) if count > 0 else x.new_zeros(x.size(-1))
        if count > 0:
            with torch.no_grad():
                dice.running_mean.lerp_(mean.detach(), dice.momentum)
                dice.running_var.lerp_(var.detach(), dice.momentum)
    else:
        mean, var = dice.running_mean, dice.running_var
    p = torch.sigmoid((x - mean) / torch.sqrt(var + dice.eps))
    return p * x + (1 - p) * dice.alpha * x


def _apply(layer: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    if isinstance(layer, Dice):
        return _masked_dice(layer, x, mask)
    if isinstance(layer, nn.PReLU):
        # nn.PReLU treats dim 1 as channels; ours are the last dim.
        return F.prelu(x.reshape(-1, x.size(-1)), layer.weight).reshape(x.shape)
    return layer(x)


def padded_target_attention(
    attention: JaggedTargetAttention,
    query: Tensor,
    values: Tensor,
    lengths: Tensor,
    max_len: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """DIN attention on padded histories with ``attention``'s parameters.

    Args:
        attention (JaggedTargetAttention): the module whose parameters to use.
        query (Tensor): [B, D].
        values (Tensor): [N, D] jagged behaviours.
        lengths (Tensor): [B].
        max_len (Optional[int]): T >= lengths.max(); default lengths.max().

    Returns:
        Tuple[Tensor, Tensor, Tensor]: pooled [B, D], weights [B, T] (0 at padding),
        mask [B, T].
    """
    if max_len is None:
        max_len = int(lengths.max().item()) if lengths.numel() else 0
    unit = attention.unit
    keys, mask = jagged_to_padded(values, lengths, max_len)
    q = query.unsqueeze(1).expand_as(keys)
    inputs = [keys, q, keys - q, keys * q]
    weight = unit.input_layer.weight
    if unit.outer_weight is not None:
        b, t, d = keys.shape
        inputs.append((keys.unsqueeze(-1) * q.unsqueeze(-2)).reshape(b, t, d * d))
        weight = torch.cat([weight, unit.outer_weight.reshape(weight.size(0), d * d)], dim=1)
    hidden = F.linear(torch.cat(inputs, dim=-1), weight, unit.input_layer.bias)
    hidden = _apply(unit.input_activation, hidden, mask)
    for layer in unit.hidden.layers:
        hidden = _apply(layer, hidden, mask)
    scores = unit.output_layer(hidden).squeeze(-1)  # [B, T]
    if attention.normalization == "softmax":
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        weights = torch.where(mask, weights, torch.zeros_like(weights))  # empty rows: NaN -> 0
    else:
        weights = scores * mask
    pooled = (weights.unsqueeze(-1) * keys).sum(1)
    return pooled, weights, mask
