"""Training and evaluation."""

from torchrec_din.config import DEFAULTS, load_config  # noqa: F401
from torchrec_din.train.predict import predict  # noqa: F401
from torchrec_din.train.sharded import train  # noqa: F401
