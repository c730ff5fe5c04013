"""Which caught warnings are deprecations of our making (for tests of the default paths)."""

import os
import warnings
from typing import List, Sequence

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXAMPLES = os.path.join(os.path.dirname(_PACKAGE), "examples")

# Deprecations of APIs only our code calls on the default paths; torch points these
# warnings at its own frames (torch/jit/_script.py), so they are ours whatever file they name.
OUR_CALLS = ("`torch.jit.script` is deprecated", "`torch.jit.save` is deprecated",
             "`torch.jit.trace` is deprecated", "`torch.jit.load` is deprecated")


def deprecations_of_ours(caught: Sequence[warnings.WarningMessage]) -> List[str]:
    """The DeprecationWarnings / FutureWarnings among ``caught`` that point into this
    package or its examples, or that deprecate an API we call (``OUR_CALLS``); warnings
    torch, torchrec or fbgemm raise about their own internals are left out."""
    return [f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning))
            and (os.path.abspath(w.filename).startswith((_PACKAGE + os.sep,
                                                         _EXAMPLES + os.sep))
                 or str(w.message).startswith(OUR_CALLS))]
