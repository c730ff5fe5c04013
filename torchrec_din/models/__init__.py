"""DIN, the paper's BaseModel, and the training wrapper."""

from torchrec_din.models.din import BaseModel, DIN, DINModel, DINTrain  # noqa: F401
