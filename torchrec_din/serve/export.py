"""Load a trained model from its checkpoint and export its grouped scorer: an AOTInductor
package (``torch.export`` of the whole scorer, compiled ahead of time; the default) or, as
the legacy format, TorchScript (fp32 or int8)."""

import copy
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from torchrec_din.io import atomic_write, atomic_write_path
from torchrec_din.models import DINModel
from torchrec_din.serve.scorer import DINScorer
from torchrec_din.build import build_model
from torchrec_din.io import load_checkpoint


def load_trained(checkpoint: str, device: Optional[torch.device] = None
                 ) -> Tuple[DINModel, Dict[str, Any]]:
    """The model in ``checkpoint`` (a run folder, whose ``best.pt`` is used, or a .pt file),
    in eval mode on ``device`` (default cpu), and the checkpoint's content (config, vocab,
    epoch)."""
    path = os.path.join(checkpoint, "best.pt") if os.path.isdir(checkpoint) else checkpoint
    state = load_checkpoint(path)
    if "vocab" not in state or "config" not in state:
        raise ValueError(f"{path} lacks 'vocab' or 'config'; it was not written by "
                         "torchrec_din's training")
    model = build_model(state["vocab"], state["config"], device or torch.device("cpu"))
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


# The AOTInductor metadata key under which the package keeps what `score` needs to read
# requests for it (``aot_inductor.metadata``: kept in the compiled model, read back with
# ``get_metadata()``).
SPEC_KEY = "torchrec_din.scorer_spec"


def scorer_spec(scorer: DINScorer, pooled_multi_hot: Optional[List[str]] = None
                ) -> Dict[str, Any]:
    """What a request for ``scorer`` must hold, as JSON: candidate features, groups and
    their features, pooled features (and which are multi-hot), table rows per feature, the
    dense width and the history cap."""
    model = scorer.model
    return {"format": 1, "features": scorer.features, "group_names": scorer.group_names,
            "group_features": scorer.group_features,
            "history_features": scorer.history_features,
            "pooled_features": scorer.pooled_features,
            "pooled_multi_hot": pooled_multi_hot,
            "rows": {**model.sequence_rows, **model.pooled_rows},
            "dense_in_features": scorer.dense_in_features,
            "max_history": scorer.max_history, "torch": torch.__version__}


def example_request(scorer: DINScorer, device: Optional[torch.device] = None
                    ) -> Tuple[Any, ...]:
    """A small request of 3 users (histories of 3, 0 and 5 behaviours in every group; 2, 1
    and 4 candidates), ids 0, on ``device``: the example inputs the scorer is exported on."""
    from torchrec_din.grouped import pooled_kjt

    kw: Dict[str, Any] = {"dtype": torch.long, "device": device}
    lengths = torch.tensor([3, 0, 5], **kw)
    counts = torch.tensor([2, 1, 4], **kw)
    hist = [torch.zeros(8, len(f), **kw) for f in scorer.history_features]
    pooled = pooled_kjt(scorer.pooled_features,
                        torch.zeros(3, len(scorer.pooled_features), **kw))
    return (hist, [lengths.clone() for _ in hist],
            torch.zeros(7, len(scorer.features), **kw), counts, pooled,
            torch.zeros(3, scorer.dense_in_features, device=device))


def export_aoti_scorer(model: DINModel, path: str, max_history: int = 0,
                       pooled_multi_hot: Optional[List[str]] = None) -> Dict[str, Any]:
    """The grouped scorer of ``model`` as an AOTInductor package at ``path``: whole-model
    ``torch.export`` (users, behaviours and candidates per user dynamic), compiled by
    ``torch._inductor.aoti_compile_and_package``, with the request spec inside. Written to
    a temp file next to ``path`` and renamed. Returns the spec.

    The package runs without Python's model code (``torch._inductor.aoti_load_package`` or
    C++ ``AOTIModelPackageLoader``); :func:`load_aoti_scorer` loads it with its spec.
    """
    from torchrec_din.export import export_model

    scorer = DINScorer(model, max_history).eval()
    spec = scorer_spec(scorer, pooled_multi_hot)
    device = next(model.parameters()).device  # the package runs where it was compiled
    spec["device"] = str(device)
    with torch.no_grad():
        program = export_model(scorer, example_request(scorer, device))

    def package(tmp: str) -> None:
        import torch.fx.experimental._config as fx_config

        # As in export: a request of one user or one candidate is not special-cased (without
        # this the compiled code asserts some of those sizes >= 2).
        with fx_config.patch(backed_size_oblivious=True):
            torch._inductor.aoti_compile_and_package(
                program, package_path=tmp,
                inductor_configs={"aot_inductor.metadata": {SPEC_KEY: json.dumps(spec)}})

    atomic_write_path(path, package)
    return spec


def load_aoti_scorer(path: str) -> Tuple[Any, Dict[str, Any]]:
    """(callable, spec) of a package written by :func:`export_aoti_scorer`; the callable
    takes the :class:`DINScorer` inputs. A missing, damaged or foreign file is a ValueError
    naming it."""
    import logging

    if not os.path.isfile(path):
        raise ValueError(f"--model {path}: no such file")
    import fbgemm_gpu  # noqa: F401  (registers the FBGEMM ops a package may call)

    # torch logs a warning and retries another reader before it gives up on a foreign file.
    package_log = logging.getLogger("torch._inductor.package.package")
    level = package_log.level
    package_log.setLevel(logging.ERROR)
    try:
        runner = torch._inductor.aoti_load_package(path)
        spec = json.loads(runner.get_metadata()[SPEC_KEY])
    except KeyError:
        raise ValueError(f"--model {path} is not a scorer package written by `python -m "
                         "torchrec_din export` (an AOTInductor package without its request "
                         "spec)") from None
    except Exception as e:
        raise ValueError(f"--model {path} is not a scorer package written by `python -m "
                         f"torchrec_din export`, or it is damaged ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    finally:
        package_log.setLevel(level)
    return runner, spec
