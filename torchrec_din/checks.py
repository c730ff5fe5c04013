"""Input checks for the DIN modules and models: the one place they live, apart from the math.

TorchRec and FBGEMM do not validate inputs: an out-of-range id can read garbage or crash
deep inside a kernel, and a jagged tensor whose lengths do not match its values splits
wrongly. The checks here raise a ValueError that names the feature (and its table), the
offending value and the batch row.

Two kinds, with different costs:

* **Shape checks** (``check_*_shapes``, ``get_feature``, ``check_feature_dim``, the size
  parts of the others) compare sizes and types only. They never read tensor data, cost
  nothing on a GPU, and always run. They are export-safe: under ``torch.export`` /
  ``torch.compile`` a batch or row count can be symbolic and even data-dependent (the rows
  an EmbeddingCollection returns), where a Python ``if`` cannot be decided; there each size
  condition goes through ``torch._check`` (a recorded runtime assert, see :func:`shape_ok`).
* **Value checks** (``check_lengths``, ``check_candidate_lengths``, ``check_equal_lengths``,
  ``check_kjt``, ``check_dense``, ``check_labels``) read data: sums, minima, id ranges.
  Each reads a few scalars on the host (a device sync on a GPU), so the modules run them
  only when their ``validate_inputs`` switch is on (the default). With it off a forward
  and backward do no host sync. Under ``torch.export`` / ``torch.compile`` they become
  ``torch._assert_async`` device asserts (no sync, a fixed message without the row).

Every function is TorchScript-compatible (the modules stay scriptable with checks on) and
is registered as an fx leaf where the modules call it, since it branches on data.
"""

from typing import Dict, List, Optional

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor


def _first_true(mask: Tensor) -> int:
    """Position of the first True in a 1-D bool mask (reads it on the host)."""
    return int(torch.argmax(mask.to(torch.int32)).item())


def _first_bad_row(bad: Tensor, compiled_message: str) -> int:
    """Row of the first True in the 1-D mask ``bad``, or -1 if none (one host read).

    Under ``torch.export`` / ``torch.compile`` the data cannot be read: the check becomes a
    device assert carrying ``compiled_message`` and -1 is returned.
    """
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), compiled_message)
        return -1
    if not bool(bad.any()):
        return -1
    return _first_true(bad)


def shape_ok(ok: bool) -> bool:
    """A size condition, export-safe. Eager and scripted: ``ok`` itself (the caller raises
    its ValueError). Under ``torch.export`` / ``torch.compile``: ``torch._check(ok)``, which
    records the condition on symbolic sizes as a runtime assert (and lets the compiler
    assume it) instead of guarding on it, then True."""
    if torch.compiler.is_compiling():
        torch._check(ok)
        return True
    return ok


def describe(name: str, table: str) -> str:
    """``feature 'name' (table 'table')`` for messages; the table part only when known."""
    if table == "":
        return "feature '" + name + "'"
    return "feature '" + name + "' (table '" + table + "')"


def check_attention_shapes(
    query: Tensor, values: Tensor, lengths: Tensor, dim: int, grouped: bool = False
) -> None:
    """Shapes of one attention call: query [B, dim], values [N, dim], lengths [B]. With
    ``grouped`` the query is [K, dim] (K candidates over the B histories) and any K is fine."""
    if query.dim() != 2 or query.size(1) != dim:
        raise ValueError(
            f"query must be [B, {dim}] (one candidate embedding per sample), "
            f"got shape {list(query.shape)}"
        )
    if values.dim() != 2 or values.size(1) != dim:
        raise ValueError(
            f"keys.values() must be [N, {dim}] (one row per behaviour), "
            f"got shape {list(values.shape)}"
        )
    if lengths.dim() != 1:
        raise ValueError(f"keys.lengths() must be [B], got shape {list(lengths.shape)}")
    if grouped:
        return
    if not shape_ok(lengths.size(0) == query.size(0)):
        raise ValueError(
            f"keys.lengths() must be [B] with B = {query.size(0)} query rows (one history "
            f"per candidate), got shape {list(lengths.shape)}"
        )


def check_num_candidates(num_candidates: Tensor, lengths: Tensor) -> None:
    """Shape check: one candidate count per history."""
    if num_candidates.dim() != 1 or not shape_ok(num_candidates.size(0) == lengths.size(0)):
        raise ValueError(f"num_candidates must be [B] with B = {lengths.size(0)} histories, "
                         f"got shape {list(num_candidates.shape)}")


def check_lengths(values: Tensor, lengths: Tensor, name: str) -> None:
    """Value check: ``lengths`` are non-negative and sum to the rows of ``values``."""
    if torch.compiler.is_compiling():
        torch._assert_async(
            (lengths.sum() == values.size(0)) & (lengths >= 0).all(),
            "jagged lengths must be >= 0 and sum to the number of value rows",
        )
        return
    if lengths.numel() == 0:
        if values.size(0) != 0:
            raise ValueError(f"{name} has no histories but {name}.values() has "
                             f"{values.size(0)} rows")
        return
    low = int(lengths.min().item())
    if low < 0:
        row = _first_true(lengths < 0)
        raise ValueError(f"{name}.lengths() must be >= 0, row {row} has {low}")
    total = int(lengths.sum().item())
    if total != values.size(0):
        raise ValueError(
            f"{name}.lengths() sum to {total} but {name}.values() has {values.size(0)} rows; "
            "they must be equal"
        )


def get_feature(
    embeddings: Dict[str, JaggedTensor], name: str, table: str, group: str
) -> JaggedTensor:
    """``embeddings[name]``, with clear errors for a missing or a pooled feature."""
    keys: List[str] = list(embeddings.keys())
    if name not in keys:
        raise ValueError(
            f"group '{group}': {describe(name, table)} is missing from the "
            f"embeddings; got {keys}"
        )
    jt = embeddings[name]
    if not torch.jit.is_scripting() and not isinstance(jt, JaggedTensor):
        raise ValueError(
            f"group '{group}': {describe(name, table)} is a {type(jt).__name__}, "
            "not a JaggedTensor: it comes from an EmbeddingBagCollection, which pools a "
            "history into one vector. Look it up with an EmbeddingCollection (one row per "
            "behaviour) instead"
        )
    return jt


def check_feature_dim(values: Tensor, name: str, table: str, dim: int, group: str) -> None:
    """Shape check: a feature's embeddings are [rows, dim] as the group was built for."""
    if values.dim() != 2 or values.size(1) != dim:
        raise ValueError(
            f"group '{group}': {describe(name, table)} has embeddings of shape "
            f"{list(values.shape)}, but the group was built for embedding dim {dim}; "
            "pass the table's dim for this feature to the interaction"
        )


def check_candidate_lengths(lengths: Tensor, name: str, table: str) -> None:
    """Value check: a candidate feature has exactly one id per sample."""
    row = _first_bad_row(lengths != 1, "candidate features need exactly one id per sample")
    if row >= 0:
        raise ValueError(
            f"candidate {describe(name, table)} must have exactly one id per "
            f"sample; row {row} has {int(lengths[row].item())}"
        )


def check_equal_lengths(
    first: str, other: str, a: Tensor, b: Tensor, validate_values: bool
) -> None:
    """History features of one group have the same number of behaviours per sample.

    The sample count is a shape check (always); the per-sample lengths are a value check
    (``validate_values``).
    """
    if not shape_ok(a.size(0) == b.size(0)):
        raise ValueError(
            f"history features '{first}' and '{other}' have {a.size(0)} and {b.size(0)} "
            "samples; they must be equal"
        )
    if not validate_values:
        return
    row = _first_bad_row(a != b, "history features of a group need equal lengths")
    if row >= 0:
        raise ValueError(
            f"history features '{first}' and '{other}' must have equal lengths per sample; "
            f"row {row} has {int(a[row].item())} vs {int(b[row].item())}"
        )


def check_kjt(
    kjt: Optional[KeyedJaggedTensor],
    name: str,
    num_rows: Dict[str, int],
    tables: Dict[str, str],
) -> None:
    """Value check of a KJT against the features a collection expects.

    Args:
        kjt: the input (None is an error).
        name: the argument's name, for messages (e.g. "sequence_features").
        num_rows: feature -> rows of its table (ids must be in [0, rows)).
        tables: feature -> table name.
    """
    expected: List[str] = list(num_rows.keys())
    if kjt is None:
        raise ValueError(f"{name} is None but the model needs features {expected}")
    keys = kjt.keys()
    missing: List[str] = []
    unexpected: List[str] = []
    for k in expected:
        if k not in keys:
            missing.append(k)
    for k in keys:
        if k not in expected:
            unexpected.append(k)
    if len(missing) > 0 or len(unexpected) > 0:
        raise ValueError(
            f"{name}: missing feature(s) {missing}, unexpected feature(s) {unexpected}; "
            f"expected exactly {expected}"
        )
    lengths, values = kjt.lengths(), kjt.values()
    if lengths.device != values.device:
        raise ValueError(f"{name}: lengths are on {lengths.device} but values on "
                         f"{values.device}; move the whole KJT with kjt.to(device)")
    if lengths.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (no data to check or look up); "
                         "build the batch on cpu or cuda, or set validate_inputs=False to "
                         "trace shapes only")
    num_keys = len(keys)
    if torch.compiler.is_compiling():
        # No host reads under export / compile: one device assert per condition.
        torch._assert_async((lengths >= 0).all() & (lengths.sum() == values.numel()),
                            "KJT lengths must be >= 0 and sum to the number of ids")
        stride = lengths.numel() // max(num_keys, 1)
        per_key = lengths.view(num_keys, stride).sum(1)
        limits = torch.tensor([num_rows[k] for k in keys], dtype=values.dtype,
                              device=values.device)
        limit_per_value = torch.repeat_interleave(limits, per_key, output_size=values.numel())
        torch._assert_async(((values >= 0) & (values < limit_per_value)).all(),
                            "ids must be in [0, rows of their table)")
        return
    stride = kjt.stride()
    if stride == 0:
        raise ValueError(f"{name}: empty batch (0 samples)")
    if lengths.numel() != stride * num_keys:
        raise ValueError(
            f"{name}: lengths has {lengths.numel()} entries, expected batch size {stride} x "
            f"{num_keys} features = {stride * num_keys}"
        )
    if int(lengths.min().item()) < 0:
        pos = _first_true(lengths < 0)
        raise ValueError(
            f"{name}: feature '{keys[pos // stride]}' has negative length "
            f"{int(lengths[pos].item())} at batch row {pos % stride}"
        )
    total = int(lengths.sum().item())
    if total != values.numel():
        raise ValueError(
            f"{name}: lengths sum to {total} but values holds {values.numel()} ids; "
            "they must be equal"
        )
    per_key = lengths.view(num_keys, stride).sum(1)
    limits = torch.tensor([num_rows[k] for k in keys], dtype=values.dtype,
                          device=values.device)
    limit_per_value = torch.repeat_interleave(limits, per_key, output_size=total)
    pos = _first_bad_row((values < 0) | (values >= limit_per_value),
                         "ids must be in [0, rows of their table)")
    if pos >= 0:
        ends = torch.cumsum(per_key, 0)
        key_index = int((ends <= pos).sum().item())
        key = keys[key_index]
        start = int(ends[key_index].item()) - int(per_key[key_index].item())
        row_ends = torch.cumsum(lengths.view(num_keys, stride)[key_index], 0)
        row = int((row_ends <= pos - start).sum().item())
        raise ValueError(
            f"{name}: feature '{key}' (table '{tables[key]}', {num_rows[key]} rows) has id "
            f"{int(values[pos].item())} at batch row {row}; ids must be in [0, {num_rows[key]})"
        )


def check_dense(
    dense: Optional[Tensor], batch_size: int, in_features: int, validate_values: bool
) -> None:
    """Dense features are [B, F] (shape check) and finite (value check)."""
    if dense is None:
        raise ValueError(f"dense_features is None but the model needs [B, {in_features}]")
    if dense.dim() != 2 or dense.size(1) != in_features:
        raise ValueError(
            f"dense_features must be [B, {in_features}], got shape {list(dense.shape)}"
        )
    if not shape_ok(dense.size(0) == batch_size):
        raise ValueError(
            f"dense_features has {dense.size(0)} rows but the sparse features hold "
            f"{batch_size} samples"
        )
    if not validate_values:
        return
    pos = _first_bad_row(~torch.isfinite(dense).reshape(-1),
                         "dense features must be finite")
    if pos >= 0:
        row, col = pos // in_features, pos % in_features
        raise ValueError(
            f"dense_features has a non-finite value {dense[row, col].item()} at batch row "
            f"{row}, column {col}"
        )


def check_pooled_rows(rows: int, batch_size: int, name: str) -> None:
    """Shape check: a pooled feature has one row per sample of the sequence features."""
    if not shape_ok(rows == batch_size):
        raise ValueError(
            f"pooled_features: feature '{name}' has {rows} rows (batch size of "
            f"pooled_features) but sequence_features hold {batch_size} samples; both KJTs "
            "must have the same batch size (one pooled row per sample or history)")


def check_labels(labels: Tensor, batch_size: int) -> None:
    """Labels are a float [B] tensor (shape and type checks) of 0s and 1s (value check)."""
    if not labels.is_floating_point():
        raise ValueError(f"labels must be a float tensor of 0.0 / 1.0 (what "
                         f"BCEWithLogitsLoss takes), got dtype {labels.dtype}; convert them "
                         "with labels.float()")
    if labels.dim() != 1 or not shape_ok(labels.size(0) == batch_size):
        raise ValueError(f"labels must be [B] with B = {batch_size}, got {list(labels.shape)}")
    row = _first_bad_row((labels != 0) & (labels != 1), "labels must be 0 or 1")
    if row >= 0:
        raise ValueError(f"labels must be 0 or 1; batch row {row} has {labels[row].item()}")


def set_validate_inputs(module: "torch.nn.Module", enabled: bool) -> int:
    """Switch the value checks of every DIN module inside ``module`` on or off.

    Walks ``module`` (any model, e.g. your own ranker holding a DINInteraction) and sets
    ``validate_inputs`` on each submodule that has it. Returns how many were set.

    Example::

        set_validate_inputs(my_ranker, False)  # trusted pipeline: no host syncs
    """
    count = 0
    for sub in module.modules():
        if hasattr(sub, "validate_inputs") and isinstance(sub.validate_inputs, bool):
            sub.validate_inputs = enabled
            count += 1
    return count
