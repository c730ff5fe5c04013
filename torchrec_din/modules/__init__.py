"""DIN building blocks: Dice, the local activation unit, jagged target attention, interactions."""

from torchrec_din.modules.activation import ACTIVATIONS, Dice, make_activation  # noqa: F401
from torchrec_din.modules.attention import (  # noqa: F401
    JaggedTargetAttention,
    LocalActivationUnit,
    NORMALIZATIONS,
)
from torchrec_din.modules.interaction import (  # noqa: F401
    AttentionGroup,
    DINInteraction,
    feature_specs,
    merge_embeddings,
    SumPoolingInteraction,
)
from torchrec_din.modules.mlp import ActivationMLP  # noqa: F401
