"""torchrec_din: the Deep Interest Network on TorchRec's jagged tensors, without padding."""

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
