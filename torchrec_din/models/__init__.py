"""DIN, the paper's BaseModel, and the training wrapper."""

from torchrec_din.models.din import (  # noqa: F401
    BaseModel,
    compile_dense,
    DIN,
    DINModel,
    DINTrain,
)
