"""Validation of batches at the model boundary, before TorchRec/FBGEMM see them.

TorchRec and FBGEMM do not validate inputs: an out-of-range id on CPU can read garbage or
crash deep inside a kernel, and a KJT whose lengths do not match its values splits wrongly.
Every check here is vectorised (one pass over the ids) and raises a ValueError that names
the feature (and table), the offending value and the batch row. Callers register them as fx leaves (``torch.fx.wrap`` at the call site).
"""

from typing import Dict, List, Optional

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def _batch_row(lengths: Tensor, position: int) -> int:
    """The sample (row of lengths) that holds value ``position`` of one feature."""
    ends = torch.cumsum(lengths, 0)
    return int(torch.searchsorted(ends, torch.tensor(position), right=True).item())


def validate_kjt(
    kjt: Optional[KeyedJaggedTensor],
    name: str,
    num_rows: Dict[str, int],
    tables: Dict[str, str],
) -> None:
    """Check a KJT against the features a collection expects.

    Args:
        kjt: the input (None is an error).
        name: the argument's name, for messages (e.g. "sequence_features").
        num_rows: feature -> rows of its table (ids must be in [0, rows)).
        tables: feature -> table name.
    """
    expected: List[str] = list(num_rows)
    if kjt is None:
        raise ValueError(f"{name} is None but the model needs features {expected}")
    keys = kjt.keys()
    missing = [k for k in expected if k not in keys]
    unexpected = [k for k in keys if k not in num_rows]
    if missing or unexpected:
        raise ValueError(
            f"{name}: missing feature(s) {missing}, unexpected feature(s) {unexpected}; "
            f"expected exactly {expected}"
        )
    lengths, values = kjt.lengths(), kjt.values()
    stride = kjt.stride()
    if stride == 0:
        raise ValueError(f"{name}: empty batch (0 samples)")
    if lengths.numel() != stride * len(keys):
        raise ValueError(
            f"{name}: lengths has {lengths.numel()} entries, expected batch size {stride} x "
            f"{len(keys)} features = {stride * len(keys)}"
        )
    if lengths.numel() and int(lengths.min().item()) < 0:
        pos = int(torch.nonzero(lengths < 0)[0].item())
        raise ValueError(
            f"{name}: feature {keys[pos // stride]!r} has negative length "
            f"{int(lengths[pos].item())} at batch row {pos % stride}"
        )
    total = int(lengths.sum().item())
    if total != values.numel():
        raise ValueError(
            f"{name}: lengths sum to {total} but values holds {values.numel()} ids; "
            "they must be equal"
        )
    per_key = lengths.view(len(keys), stride).sum(1)
    limits = torch.tensor([num_rows[k] for k in keys], dtype=values.dtype)
    limit_per_value = torch.repeat_interleave(limits, per_key, output_size=total)
    bad = (values < 0) | (values >= limit_per_value)
    if bool(bad.any()):
        pos = int(torch.nonzero(bad)[0].item())
        key_index = int(torch.searchsorted(torch.cumsum(per_key, 0), torch.tensor(pos),
                                           right=True).item())
        key = keys[key_index]
        start = int(per_key[:key_index].sum().item())
        row = _batch_row(lengths.view(len(keys), stride)[key_index], pos - start)
        raise ValueError(
            f"{name}: feature {key!r} (table {tables[key]!r}, {num_rows[key]} rows) has id "
            f"{int(values[pos].item())} at batch row {row}; ids must be in [0, {num_rows[key]})"
        )


def validate_dense(dense: Tensor, batch_size: int, in_features: int) -> None:
    if dense.dim() != 2 or dense.size(1) != in_features:
        raise ValueError(
            f"dense_features must be [B, {in_features}], got shape {list(dense.shape)}"
        )
    if dense.size(0) != batch_size:
        raise ValueError(
            f"dense_features has {dense.size(0)} rows but the sparse features hold "
            f"{batch_size} samples"
        )
    finite = torch.isfinite(dense)
    if not bool(finite.all()):
        row, col = [int(v) for v in torch.nonzero(~finite)[0].tolist()]
        raise ValueError(
            f"dense_features has a non-finite value {dense[row, col].item()} at batch row "
            f"{row}, column {col}"
        )


def validate_labels(labels: Tensor, batch_size: int) -> None:
    if labels.dim() != 1 or labels.numel() != batch_size:
        raise ValueError(f"labels must be [B] with B = {batch_size}, got {list(labels.shape)}")
    bad = (labels != 0) & (labels != 1)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0].item())
        raise ValueError(f"labels must be 0 or 1; batch row {row} has {labels[row].item()}")
