"""Training and evaluation."""

from torchrec_din.train.config import DEFAULTS, load_config  # noqa: F401
from torchrec_din.train.loop import predict, train  # noqa: F401
