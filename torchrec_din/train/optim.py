"""The dense optimizer of both backends: ``train.optimizer`` with ``train.l2_lambda`` as
weight decay when ``train.regularization=l2``."""

from typing import Any, Dict, Iterable

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter],
                   train_cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``params``; plain L2 (``regularization: l2``) is weight decay,
    while "mba" regularises embeddings in the loss."""
    optimizers = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
    name = train_cfg["optimizer"]
    if name not in optimizers:
        raise ValueError(f"train.optimizer must be adam, adagrad or sgd, got {name!r}")
    return optimizers[name](params, lr=train_cfg["learning_rate"],
                            weight_decay=weight_decay(train_cfg))


def apply_train_config(optimizer: torch.optim.Optimizer, train_cfg: Dict[str, Any]) -> None:
    """Set learning rate and weight decay from ``train_cfg`` on a (restored) optimizer."""
    for group in optimizer.param_groups:
        group["lr"] = train_cfg["learning_rate"]
        if "weight_decay" in group:
            group["weight_decay"] = weight_decay(train_cfg)


def weight_decay(train_cfg: Dict[str, Any]) -> float:
    """``train.l2_lambda`` when ``train.regularization=l2`` (weight decay of the dense
    optimizer and of the tables' fused one), else 0."""
    # Plain L2 is weight decay; "mba" regularises embeddings in the loss instead.
    return train_cfg["l2_lambda"] if train_cfg["regularization"] == "l2" else 0.0
