"""Training and evaluation."""

from torchrec_din.config import DEFAULTS, load_config  # noqa: F401
from torchrec_din.train.local import predict, train  # noqa: F401
