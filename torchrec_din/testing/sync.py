"""Count host syncs: the aten ops that read tensor data on the host."""

import collections
from typing import Any, Dict

from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.item", "aten.is_nonzero")


class SyncCounter(TorchDispatchMode):
    """A dispatch mode counting ops that copy tensor data to the host.

    On a GPU each of them waits for the stream (``.item()``, ``bool(t)``, ``nonzero``,
    ``.tolist()`` all end in ``aten._local_scalar_dense`` or ``aten.nonzero``). The mode sees
    them on CPU tensors too, so a CPU test shows what would stall a GPU.

    Example::

        with SyncCounter() as counter:
            model(batch)[0].backward()
        assert counter.total == 0, counter.counts
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Dict[str, int] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket)
        if name.startswith(SYNC_OPS):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))
