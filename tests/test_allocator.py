import platform
import subprocess
import sys
import textwrap
from typing import List

import pytest

import torchrec_din.allocator
from torchrec_din.allocator import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A child process (malloc settings are process-wide and cannot be undone): 100 MB malloc'd,
# written, freed, four times; prints the minor page faults of each round.
_CHILD = textwrap.dedent("""
    import ctypes, importlib.util, resource, sys
    # The module alone, by path: importing the package would load torch (seconds).
    spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
    allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(allocator)
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory() is True
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(100_000_000)
        ctypes.memset(p, 1, 100_000_000)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults)
""")


def _faults(setting: str) -> List[int]:
    path = torchrec_din.allocator.__file__
    out = subprocess.run([sys.executable, "-c", _CHILD, setting, path], capture_output=True,
                         text=True, check=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's; elsewhere it is a no-op")
def test_freed_memory_is_reused_instead_of_mapped_again() -> None:
    pages = 100_000_000 // 4096
    default = _faults("default")
    keep = _faults("keep")
    # glibc's default unmaps a freed 100 MB block: every round faults its pages in again.
    assert min(default[1:]) > pages // 2, default
    # Kept: the first round faults the pages in, later rounds reuse them.
    assert keep[0] > pages // 2, keep
    assert max(keep[1:]) < pages // 20, keep


def test_bad_argument_and_non_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="top_pad_bytes"):
        keep_freed_memory(-1)
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert keep_freed_memory() is False
