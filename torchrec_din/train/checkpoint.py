"""Atomic checkpoint files: a killed save never leaves a file that loads as valid."""

import os
from typing import Any, Dict, List

import torch

from torchrec_din.io import atomic_write, atomic_write_json, atomic_write_text  # noqa: F401


def atomic_save(obj: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read; the message names it."""


def load_checkpoint(path: str) -> Dict[str, Any]:
    """``torch.load`` of one of our checkpoints, with errors that name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, unpickling errors, EOF: all mean a damaged file
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a torch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); restore it from a backup or start "
            "over with --overwrite") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not the "
                              "dict torchrec_din writes")
    return state


# train.* keys whose change would make the saved optimizer state meaningless.
_RESUME_FIXED = ("optimizer", "regularization", "embedding_optimizer")


def check_resumable(saved: Dict[str, Any], config: Dict[str, Any],
                    mid_epoch: bool = False) -> List[str]:
    """Whether a run can continue with ``config``; returns the train.* changes it applies.

    Seed, data, model and tables must be the same. train.* values may change (more epochs, a
    lower learning rate, ...) except the optimizer and regulariser kinds, and the batch size
    when the checkpoint was taken mid-epoch (the position in the epoch is counted in batches
    of the old size).
    """
    for key in ("seed", "data", "model", "tables"):
        if saved.get(key) != config.get(key):
            raise ValueError(f"--resume needs the same {key!r} config as the checkpoint; "
                             f"it was {saved.get(key)!r}, now {config.get(key)!r}")
    old_train, new_train = saved.get("train", {}), config["train"]
    changes: List[str] = []
    for key, new in new_train.items():
        old = old_train.get(key, new)
        if old == new:
            continue
        if key in _RESUME_FIXED:
            raise ValueError(f"--resume cannot change train.{key} ({old!r} -> {new!r}): the "
                             "saved optimizer state belongs to the old one; start a new run")
        if key == "batch_size" and mid_epoch:
            raise ValueError(
                f"--resume cannot change train.batch_size ({old} -> {new}) here: the "
                "checkpoint was taken mid-epoch and its position counts batches of "
                f"{old}. Resume with train.batch_size={old}; it may change at an epoch "
                "boundary (the checkpoint written at each epoch end)")
        changes.append(f"train.{key}: {old!r} -> {new!r}")
    return changes
