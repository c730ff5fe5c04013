#!/usr/bin/env bash
# Create .venv/ at the repo root on the current release line: torch 2.14.1, FBGEMM 1.9.0 and
# torchrec 1.9, plus this package and MovieLens-100k (from the recbole wheel). Idempotent: a
# second run with nothing changed only checks.
#
#   bash scripts/setup.sh            # .venv/ (the default environment)
#   bash scripts/setup.sh --floor    # also .venv-floor/: the oldest line we support and test,
#                                    # torch 2.13.0 (CPU), FBGEMM 1.8.0, torchrec 1.8
#
# CPU machines get FBGEMM's CPU build (fbgemm-gpu-cpu) behind a local stand-in named
# `fbgemm-gpu` (tools/fbgemm-gpu-cpu-shim*), because torchrec requires `fbgemm-gpu`, the CUDA
# build, which cannot import next to a CPU-only torch. torch 2.14.1 itself is a CUDA build that
# runs on the CPU (on these machines pip takes it from a local copy).
# GPU machines: TORCHREC_DIN_VARIANT=cuda bash scripts/setup.sh installs the matching CUDA
# fbgemm-gpu 1.9.0 instead of the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VARIANT=${TORCHREC_DIN_VARIANT:-cpu}
FLOOR=0
for arg in "$@"; do
    case "$arg" in
        --floor) FLOOR=1 ;;
        *) echo "usage: bash scripts/setup.sh [--floor]" >&2; exit 2 ;;
    esac
done

# make_env VENV TORCH FBGEMM TORCHREC_RANGE SHIM_DIR
make_env() {
    local venv=$1 torch_version=$2 fbgemm_version=$3 torchrec_range=$4 shim=$5
    local stamp=$venv/.torchrec_din_setup
    local want
    want=$(cat pyproject.toml "$shim/pyproject.toml" scripts/setup.sh | sha256sum | cut -c1-16)-$VARIANT
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import torchrec_din" 2>/dev/null; then
        return 0
    fi
    echo "[setup] creating $venv (torch $torch_version, fbgemm $fbgemm_version, torchrec $torchrec_range, $VARIANT)"
    local start=$SECONDS
    [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
    local pip="$venv/bin/python -m pip --disable-pip-version-check"
    $pip install -q "torch==$torch_version"
    if [ "$VARIANT" = "cuda" ]; then
        $pip install -q "fbgemm-gpu==$fbgemm_version"
    else
        $pip install -q "./$shim"
    fi
    $pip install -q "torchrec$torchrec_range"
    $pip install -q -e ".[train,test]"
    $pip check
    # MovieLens-100k ships inside the recbole 1.2.1 wheel. We take only its data files
    # (recbole's own dependencies would break `pip check`); the terms forbid
    # redistribution, so they live under the venv, never in git.
    local data=$venv/share/torchrec_din/ml-100k
    if [ ! -f "$data/ml-100k.inter" ]; then
        local tmp
        tmp=$(mktemp -d)
        $pip download -q --no-deps "recbole==1.2.1" -d "$tmp"
        "$venv/bin/python" - "$tmp" "$data" <<'PYEOF'
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
        rm -rf "$tmp"
    fi
    echo "$want" > "$stamp"
    echo "[setup] $venv ready in $((SECONDS - start)) s: $("$venv/bin/python" -c 'import torch, torchrec, fbgemm_gpu; from importlib.metadata import version; print("torch", torch.__version__, "torchrec", version("torchrec"), "fbgemm_gpu", fbgemm_gpu.__version__)')"
}

make_env "$ROOT/.venv" 2.14.1 1.9.0 ">=1.9,<1.10" tools/fbgemm-gpu-cpu-shim
if [ "$FLOOR" = 1 ]; then
    make_env "$ROOT/.venv-floor" 2.13.0 1.8.0 ">=1.8,<1.9" tools/fbgemm-gpu-cpu-shim-1.8
fi
