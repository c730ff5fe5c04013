"""torchrec_din: the Deep Interest Network on TorchRec's jagged tensors, without padding.

The library (needs only torch, torchrec, FBGEMM and numpy): ``ops``, ``modules``,
``models``, ``distributed``, ``checks``, ``batch``, ``grouped``, ``export``, ``io``,
``allocator``, ``testing``. The application on top (the ``train`` extra: PyYAML, tqdm,
matplotlib, pyarrow): ``config``, ``build``, ``planning``, ``data``, ``metrics``, ``serve``,
``train``, ``cli``. Imports point one way, library <- application, and inside the
application data, metrics <- config, build, planning <- serve, train <- cli;
``tests/test_packaging.py`` checks it for every module.
"""

from torchrec_din.models import BaseModel, DIN, DINModel, DINTrain  # noqa: F401
from torchrec_din.modules import (  # noqa: F401
    AttentionGroup,
    Dice,
    DINInteraction,
    JaggedTargetAttention,
    LocalActivationUnit,
    SumPoolingInteraction,
)

__version__ = "0.1.0"
