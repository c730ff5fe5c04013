import os
import sys

from torchrec_din.cli import main

code = main()
if "LOCAL_RANK" in os.environ:
    # A torchrun worker, its process group already destroyed: leave without interpreter
    # finalization. There, tensors still referenced by gloo's worker threads (pending
    # collective handles) can be freed after the interpreter is gone, and the process dies
    # with SIGABRT after a successful run (seen once in CI on a 2-rank job).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
