"""What a resumed run may change: the rules ``--resume`` checks a config against the saved
progress by. Checkpoint files themselves are written and read by ``torchrec_din.io``."""

from typing import Any, Dict, List


# train.* keys whose change would make the saved optimizer state meaningless.
# select_metric: the record's best value so far is of the old metric.
_RESUME_FIXED = ("optimizer", "regularization", "embedding_optimizer", "select_metric")


def check_resumable(saved: Dict[str, Any], config: Dict[str, Any],
                    mid_epoch: bool = False) -> List[str]:
    """Whether a run can continue with ``config``; returns the train.* changes it applies.

    Seed, data, features, model and tables must be the same. train.* values may change (more epochs, a
    lower learning rate, ...) except the optimizer and regulariser kinds, and the batch size
    when the checkpoint was taken mid-epoch (the position in the epoch is counted in batches
    of the old size).
    """
    for key in ("seed", "data", "features", "model", "tables"):
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
