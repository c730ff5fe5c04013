"""Atomic checkpoint files: a killed save never leaves a file that loads as valid."""

import os
from typing import Any, Dict

import torch

from torchrec_din.io import atomic_write


def atomic_save(obj: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def check_resumable(saved: Dict[str, Any], config: Dict[str, Any]) -> None:
    """A run can only continue with the same seed, data and model; train.* may change
    (e.g. more epochs)."""
    for key in ("seed", "data", "model", "tables"):
        if saved.get(key) != config.get(key):
            raise ValueError(f"--resume needs the same {key!r} config as the checkpoint; "
                             f"it was {saved.get(key)!r}, now {config.get(key)!r}")
