"""Keep freed host memory in the process, so large activations are not page-faulted anew.

On CPU, one DIN step allocates activations of [N, H] floats (N = behaviours in the batch)
and frees them at the end. glibc's malloc hands every allocation above its mmap threshold
(at most 32 MiB) straight to ``mmap`` and returns it to the kernel on ``free``; the next
step maps it again, and the kernel zeroes every page on first touch. That costs more than
the arithmetic once N reaches tens of thousands: time per behaviour of the attention's
forward + backward (2 cores, D = 128, MLP (80, 40)) grew from 2.8 us at N = 5k to 5.7 us at
160k, and stayed between 2.7 and 3.3 us with this setting (``benchmarks/allocator.py``).

PyTorch's CPU tensors come from plain ``malloc``, so the fix is a malloc setting; glibc
reads it from environment variables at start-up (``MALLOC_MMAP_MAX_=0``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``) or from ``mallopt`` at any time, which is
what :func:`keep_freed_memory` calls, since by the time a Python program decides, the
process has started. The price: the process keeps its peak memory (its resident size no
longer shrinks after a large step), as PyTorch's caching allocator does on a GPU, and freed
blocks of very different sizes can fragment the kept heap and raise the peak itself. Measured:
training on MovieLens at batch 2,048 peaked at the same 1.1 GB with and without it and stayed
flat over 10 epochs; the padded attention baseline of ``benchmarks/attention.py`` (blocks of
1-2 GB, each step a different mix) peaked at 21.7 GB instead of 12.2 GB.
"""

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def keep_freed_memory(top_pad_bytes: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    Large allocations come from the heap instead of ``mmap`` (``M_MMAP_MAX = 0``), the heap
    is not trimmed below its peak (``M_TRIM_THRESHOLD`` = 2 GiB, the largest ``mallopt``
    takes) and grows in steps of ``top_pad_bytes`` (address space only: pages are not
    touched until used). Process-wide, for the rest of the process (workers forked later
    inherit it); call it once, early, in a process that runs many similar steps (training,
    a serving loop). A no-op returning False where the C library is not glibc (macOS, musl).

    Args:
        top_pad_bytes (int): extra address space requested each time the heap grows.

    Returns:
        bool: True if glibc took all three settings.

    Example::

        from torchrec_din.allocator import keep_freed_memory

        keep_freed_memory()  # before the training loop
    """
    if top_pad_bytes < 0:
        raise ValueError(f"top_pad_bytes must be >= 0, got {top_pad_bytes}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The order matters little; each call returns 1 on success.
    results = [
        mallopt(_M_TRIM_THRESHOLD, _INT_MAX),
        mallopt(_M_TOP_PAD, min(top_pad_bytes, _INT_MAX)),
        mallopt(_M_MMAP_MAX, 0),
    ]
    return all(r == 1 for r in results)
