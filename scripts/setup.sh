#!/usr/bin/env bash
# Create .venv/ at the repo root with CPU torch 2.13, fbgemm-gpu-cpu 1.8.0, torchrec 1.8 and
# this package, and install MovieLens-100k data from the recbole wheel. Idempotent: a second
# run with nothing changed only checks.
#
# GPU machines: TORCHREC_DIN_VARIANT=cuda bash scripts/setup.sh installs the matching CUDA
# fbgemm-gpu 1.8.0 (and CUDA torch 2.13 from the PyTorch index) instead of the CPU shim.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
VARIANT=${TORCHREC_DIN_VARIANT:-cpu}
STAMP=$VENV/.torchrec_din_setup
# Re-install when the install inputs change.
WANT=$(cat pyproject.toml tools/fbgemm-gpu-cpu-shim/pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$VARIANT

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "import torchrec_din" 2>/dev/null; then
    exit 0
fi

echo "[setup] creating $VENV ($VARIANT)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
if [ "$VARIANT" = "cuda" ]; then
    $PIP install -q "torch==2.13.*" --index-url https://download.pytorch.org/whl/cu128
    $PIP install -q "fbgemm-gpu==1.8.0" --index-url https://download.pytorch.org/whl/cu128
else
    # Exactly 2.13.0: the CPU wheel (a range can pull a multi-GB CUDA build).
    $PIP install -q "torch==2.13.0"
    # The packaging trap: torchrec requires `fbgemm-gpu` (the CUDA build). This local
    # stand-in of that name depends only on fbgemm-gpu-cpu==1.8.0, so nothing pulls CUDA.
    $PIP install -q ./tools/fbgemm-gpu-cpu-shim
fi
# The package itself pins no release line (it installs into existing TorchRec environments);
# this environment keeps torch, FBGEMM and torchrec on one line: 2.13 / 1.8 / 1.8.
$PIP install -q "torchrec>=1.8,<1.9"
$PIP install -q -e ".[train,test]"
$PIP check

# MovieLens-100k ships inside the recbole 1.2.1 wheel. We take only its data files (recbole's
# own dependencies would break `pip check`); the terms forbid redistribution, so they live
# under .venv/, never in git.
DATA=$VENV/share/torchrec_din/ml-100k
if [ ! -f "$DATA/ml-100k.inter" ]; then
    TMP=$(mktemp -d)
    $PIP download -q --no-deps "recbole==1.2.1" -d "$TMP"
    "$VENV/bin/python" - "$TMP" "$DATA" <<'PYEOF'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "recbole-1.2.1-*.whl"))
os.makedirs(dest + ".part", exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in ("inter", "item", "user"):
        member = f"recbole/dataset_example/ml-100k/ml-100k.{name}"
        with z.open(member) as src, open(os.path.join(dest + ".part", f"ml-100k.{name}"), "wb") as dst:
            dst.write(src.read())
os.replace(dest + ".part", dest)  # atomic: a killed set-up leaves no half-written data dir
PYEOF
    rm -rf "$TMP"
fi
echo "$WANT" > "$STAMP"
echo "[setup] ready: $("$VENV/bin/python" -c 'import torch, torchrec, fbgemm_gpu; print("torch", torch.__version__, "torchrec", torchrec.__version__ if hasattr(torchrec, "__version__") else "1.8", "fbgemm_gpu", fbgemm_gpu.__version__)')"
