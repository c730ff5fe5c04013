"""Load a trained model from its checkpoint and export the scorer with TorchScript."""

import copy
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


def script_scorer(model: DINModel, max_history: int = 0,
                  int8: bool = False) -> torch.jit.ScriptModule:
    """TorchScript :class:`DINScorer` for ``model`` (keeping the newest ``max_history``
    behaviours of each history, 0: all). ``int8``: tables quantized by torchrec's
    ``quantize_inference_model`` (row-wise int8), then TorchRec's inference recipe
    (``torchrec.fx.symbolic_trace``, then ``torch.jit.script``)."""
    if not int8:
        return torch.jit.script(DINScorer(model, max_history).eval())
    from torchrec.fx import symbolic_trace
    from torchrec.inference.modules import quantize_inference_model

    quantized = quantize_inference_model(copy.deepcopy(model).eval())
    return torch.jit.script(symbolic_trace(DINScorer(quantized, max_history).eval()))


def export_scorer(model: DINModel, path: str, max_history: int = 0,
                  int8: bool = False) -> torch.jit.ScriptModule:
    """:func:`script_scorer`, saved atomically to ``path``. Load it after ``import
    fbgemm_gpu`` (or torchrec), which registers the FBGEMM ops it calls."""
    scripted = script_scorer(model, max_history, int8)
    atomic_write(path, lambda f: torch.jit.save(scripted, f))
    return scripted
