"""A plain MLP whose every layer carries its own activation module."""

from typing import List, Optional, Sequence

import torch
from torch import nn, Tensor

from torchrec_din.modules.activation import make_activation


class ActivationMLP(nn.Module):
    """Linear -> activation (-> dropout) per layer.

    ``torchrec.modules.mlp.MLP`` shares one activation callable across layers; Dice and
    PReLU hold per-feature parameters, so each layer needs its own instance of the right
    width. Hence this small module.

    Args:
        in_features (int): input width.
        layer_sizes (Sequence[int]): output width of each layer.
        activation (str): see :func:`make_activation`.
        dropout (float): dropout probability after each activation (0 disables it).
        device (Optional[torch.device]): where the parameters live.

    Shapes:
        input: [M, in_features]. output: [M, layer_sizes[-1]] (or the input if no layers).

    Example::

        mlp = ActivationMLP(256, [200, 80], activation="dice", dropout=0.1)
        y = mlp(torch.randn(32, 256))  # [32, 80]
    """

    def __init__(
        self,
        in_features: int,
        layer_sizes: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: List[nn.Module] = []
        width = in_features
        for size in layer_sizes:
            if size <= 0:
                raise ValueError(f"layer sizes must be positive, got {list(layer_sizes)}")
            layers.append(nn.Linear(width, size, device=device))
            layers.append(make_activation(activation, size, device))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_features: int = width

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
