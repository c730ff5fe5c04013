"""Load a trained model from its checkpoint and export the scorer with TorchScript."""

import os
from typing import Any, Dict, Tuple

import torch

from torchrec_din.io import atomic_write
from torchrec_din.models import DINModel
from torchrec_din.serve.scorer import DINScorer
from torchrec_din.train.builder import build_model
from torchrec_din.train.checkpoint import load_checkpoint


def load_trained(checkpoint: str) -> Tuple[DINModel, Dict[str, Any]]:
    """The model in ``checkpoint`` (a run folder, whose ``best.pt`` is used, or a .pt file),
    in eval mode, and the checkpoint's content (config, vocab, epoch)."""
    path = os.path.join(checkpoint, "best.pt") if os.path.isdir(checkpoint) else checkpoint
    state = load_checkpoint(path)
    if "vocab" not in state or "config" not in state:
        raise ValueError(f"{path} lacks 'vocab' or 'config'; it was not written by "
                         "torchrec_din's training")
    model = build_model(state["vocab"], state["config"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def export_scorer(model: DINModel, path: str, max_history: int = 0) -> torch.jit.ScriptModule:
    """Script :class:`DINScorer` for ``model`` (keeping the newest ``max_history`` behaviours
    of each history, 0: all) and save it atomically to ``path``."""
    scripted = torch.jit.script(DINScorer(model, max_history).eval())
    atomic_write(path, lambda f: torch.jit.save(scripted, f))
    return scripted
