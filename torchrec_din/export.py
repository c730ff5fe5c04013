"""``torch.export`` of models holding DIN modules, with every batch-like size dynamic.

A TorchRec model's inputs are KeyedJaggedTensors, whose pytree leaves (values, lengths,
...) have sizes that change with every batch: the number of samples and the total number of
ids. :func:`dynamic_shapes` marks the first dim of every tensor leaf of the inputs dynamic
(``torch.export.Dim.AUTO``: export works out which sizes are equal or derived, e.g. the
lengths of a KJT with F keys are F x B), so a user need not write a ``ShapesCollection``
for each KJT. :func:`export_model` exports with that spec, sizes of 0 and 1 included
(``backed_size_oblivious``: a batch of one user or an empty history is not special-cased
into the graph).

The DIN modules are export-safe: shape checks are ``torch._check`` under export (runtime
asserts on symbolic sizes), value checks become ``torch._assert_async`` device asserts, and
nothing branches in Python on a size export cannot know.

Example::

    ep = export_model(model, (batch.sequence_features, batch.pooled_features,
                              batch.dense_features))
    torch.export.save(ep, "model.pt2")
    logits = torch.export.load("model.pt2").module()(kjt, pooled, dense)  # any B, N
"""

from typing import Any, Dict, Optional, Tuple

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.export import ExportedProgram


def _leaf_shapes(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
        return {0: torch.export.Dim.AUTO}
    return None


def dynamic_shapes(args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    """The ``dynamic_shapes`` spec of ``torch.export.export`` for these example inputs:
    dim 0 of every tensor inside them (KJT and JaggedTensor leaves, lists, dicts) dynamic,
    other dims (embedding or feature widths) static.

    Args:
        args (Tuple[Any, ...]): example positional inputs of the model.

    Returns:
        Tuple[Any, ...]: a spec mirroring ``args``.

    Example::

        spec = dynamic_shapes((kjt, pooled_kjt, dense))
        ep = torch.export.export(model, (kjt, pooled_kjt, dense), dynamic_shapes=spec)
    """

    def one(value: Any) -> Any:
        if isinstance(value, torch.Tensor) or value is None:
            return _leaf_shapes(value)
        if isinstance(value, (list, tuple)):
            return type(value)(one(v) for v in value)
        if isinstance(value, dict):
            return {k: one(v) for k, v in value.items()}
        # A registered pytree node (KeyedJaggedTensor, JaggedTensor ...): one spec per
        # child, in its flatten order.
        children, _ = pytree.tree_flatten(value)
        return [_leaf_shapes(c) for c in children]

    return tuple(one(a) for a in args)


def export_model(model: nn.Module, args: Tuple[Any, ...],
                 kwargs: Optional[Dict[str, Any]] = None) -> ExportedProgram:
    """``torch.export.export`` (non-strict) of ``model`` on example inputs, with
    :func:`dynamic_shapes` and sizes 0 and 1 kept general.

    Args:
        model (nn.Module): e.g. ``DIN``, ``BaseModel``, your ranker holding a
            ``DINInteraction``, or a scorer; put it in eval mode first.
        args (Tuple[Any, ...]): example inputs (KJTs, tensors, lists of tensors).
        kwargs (Optional[Dict[str, Any]]): example keyword inputs.

    Returns:
        ExportedProgram: ``.module()`` runs it on inputs of other batch and history sizes;
        ``torch.export.save`` / ``torch.export.load`` store it.

    Example::

        ep = export_model(model.eval(), (kjt, pooled, dense))
    """
    import torch.fx.experimental._config as fx_config

    kwargs = kwargs or {}
    spec: Any = dynamic_shapes(args)
    if kwargs:  # with keyword inputs, export takes the spec as a dict by argument name
        spec = {**dict(zip(_arg_names(model, len(args)), spec)),
                **{k: dynamic_shapes((v,))[0] for k, v in kwargs.items()}}
    with fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(model, args, kwargs, dynamic_shapes=spec, strict=False)


def _arg_names(model: nn.Module, n: int) -> Tuple[str, ...]:
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    return tuple(params[:n])


def save_program(program: ExportedProgram, path: str) -> None:
    """``torch.export.save`` into a temp file next to ``path``, then renamed: a killed save
    never leaves a half-written program under ``path``."""
    from torchrec_din.io import atomic_write_path

    atomic_write_path(path, lambda tmp: torch.export.save(program, tmp))


def load_program(path: str) -> ExportedProgram:
    """``torch.export.load`` of a program whose example inputs hold TorchRec types (the
    file keeps them; loading them needs KeyedJaggedTensor and JaggedTensor allowed).

    Raises:
        ValueError: the file is missing, damaged or not an exported program; the message
            names it.
    """
    from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

    try:
        with torch.serialization.safe_globals([KeyedJaggedTensor, JaggedTensor]):
            return torch.export.load(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as e:  # a zip that is not a PT2 archive, truncated files, other formats
        raise ValueError(f"{path} is not a torch.export program or is damaged "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                         ) from None
