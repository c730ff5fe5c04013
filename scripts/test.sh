#!/usr/bin/env bash
# The test suite: all of it in .venv/ (torch 2.14 / torchrec 1.9 / FBGEMM 1.9), then the
# library (ops, modules, models), export and serving tests again in .venv-floor/ (torch 2.13 / torchrec 1.8 /
# FBGEMM 1.8, the oldest line pyproject.toml admits). Both are made by
# `bash scripts/setup.sh --floor`. Extra arguments go to the first pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
for venv in .venv .venv-floor; do
    if [ ! -x "$venv/bin/python" ]; then
        echo "error: $venv is missing; run: bash scripts/setup.sh --floor" >&2
        exit 2
    fi
done
.venv/bin/python -m pytest -q "$@"
echo "[floor] $(.venv-floor/bin/python -c 'import torch; from importlib.metadata import version; print("torch", torch.__version__, "torchrec", version("torchrec"), "fbgemm-gpu-cpu", version("fbgemm-gpu-cpu"))')"
.venv-floor/bin/python -m pytest -q tests/ops tests/modules tests/models tests/serve \
    tests/test_export.py
