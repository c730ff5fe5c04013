#!/usr/bin/env bash
# A separate environment with the peer DIN libraries for benchmarks/end_to_end.py.
# They are not dependencies of torchrec_din. Same torch (2.13.0 CPU) as .venv. deepctr_torch
# imports requests (for its version check) without declaring it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-peers/bin/python ] || python3 -m venv .venv-peers
.venv-peers/bin/python -m pip install -q --disable-pip-version-check \
    "torch==2.13.0" "deepctr-torch==0.3.0" "torch-rechub==0.9.0" "fuxictr==2.3.10" requests pandas
.venv-peers/bin/python -c "import deepctr_torch, torch_rechub, fuxictr; print('peers ready:', deepctr_torch.__version__, torch_rechub.__version__)"
