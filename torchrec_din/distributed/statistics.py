"""One model across ranks: running statistics (Dice, BatchNorm) agreed by all-reduce.

DistributedModelParallel wraps the dense part of a model in DistributedDataParallel with
``broadcast_buffers=False``, so every rank's Dice ``running_mean`` / ``running_var`` follow
its own batches and drift apart: sharded evaluation would mix several models, and the
gathered state dict would be rank 0's alone. DDP's own buffer broadcast would make rank 0's
statistics everyone's; averaging keeps what every rank saw. Gradients are already averaged
by DDP, so after :func:`sync_buffers` the dense part is identical on every rank.
"""

from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn

# Modules whose buffers are running statistics (by class name, so that scripted copies made
# by TrainPipelineSparseDist(apply_jit=True) are found too).
STATISTICS_MODULES = ("Dice", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")


def statistics_buffers(module: nn.Module) -> List[torch.Tensor]:
    """The floating-point buffers of every running-statistics module inside ``module``
    (Dice, BatchNorm), in a fixed order; integer counters (``num_batches_tracked``) are left
    out."""
    out: List[torch.Tensor] = []
    seen = set()
    for _, sub in module.named_modules():
        name = getattr(sub, "original_name", type(sub).__name__)  # scripted: the source class
        if name not in STATISTICS_MODULES:
            continue
        for buffer in sub.buffers(recurse=False):
            if buffer.is_floating_point() and id(buffer) not in seen:
                seen.add(id(buffer))
                out.append(buffer)
    return out


@torch.no_grad()
def sync_buffers(module: nn.Module, group: Optional[dist.ProcessGroup] = None) -> int:
    """Average every running-statistics buffer of ``module`` over the ranks of ``group``
    (one all-reduce of all of them together), in place. Call it on every rank at the same
    point: before evaluation, before saving, and as often as statistics may drift (the
    package's sharded training does it at every loss read). A no-op outside
    ``torch.distributed`` or with one rank.

    Args:
        module (nn.Module): any model, e.g. ``DistributedModelParallel`` of your ranker.
        group (Optional[dist.ProcessGroup]): the ranks to agree over (default: all).

    Returns:
        int: the number of buffers averaged.

    Example::

        dmp = DistributedModelParallel(MyRanker(...), ...)
        ...  # training steps
        sync_buffers(dmp)  # every rank now holds the same Dice statistics
    """
    buffers = statistics_buffers(module)
    if not buffers or not dist.is_available() or not dist.is_initialized():
        return 0
    world = dist.get_world_size(group)
    if world == 1:
        return len(buffers)
    flat = torch.cat([b.reshape(-1).to(torch.float64) for b in buffers])
    dist.all_reduce(flat, group=group)  # SUM: gloo has no AVG
    flat /= world
    offset = 0
    for b in buffers:
        n = b.numel()
        b.copy_(flat[offset:offset + n].view_as(b).to(b.dtype))
        offset += n
    return len(buffers)
