#!/usr/bin/env bash
# One-shot GPU check (at most 8 minutes on one CUDA GPU): the CUDA tests, then the
# one-process attention, training-step and serving timings in fp32 and bf16.
#
#   bash benchmarks/gpu_check.sh            # with .venv (TORCHREC_DIN_VARIANT=cuda set-up)
#   PYTHON=python3 bash benchmarks/gpu_check.sh   # a machine's own torch (no FBGEMM CUDA build
#                                                 # needed: the default jagged path is pure torch)
#
# Where FBGEMM has no CUDA kernels next to this torch (a CPU fbgemm-gpu-cpu wheel carried to
# a GPU machine), the check says so and keeps to what runs on pure torch ops: every DIN
# attention path except the bilinear outer product (D > 24, torch.ops.fbgemm.jagged_dense_bmm)
# and the "fbgemm" segment_softmax (torch.ops.fbgemm.jagged_softmax).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LIMIT=${GPU_CHECK_SECONDS:-480}
timeout "$LIMIT" bash -c '
PY=$1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"GPU\", torch.cuda.get_device_name(0))"
"$PY" - <<PYEOF
import torch
try:
    import fbgemm_gpu  # noqa: F401
    x = torch.ones(4, device="cuda", dtype=torch.long)
    torch.ops.fbgemm.asynchronous_complete_cumsum(x)
    print("[fbgemm] CUDA kernels present")
except Exception as e:  # noqa: BLE001
    print("[fbgemm] no CUDA kernels here (" + type(e).__name__ + "): avoiding "
          "torch.ops.fbgemm.jagged_dense_bmm (outer product, D > 24) and jagged_softmax")
PYEOF
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
"$PY" - <<PYEOF
import time, torch
from torchrec.sparse.jagged_tensor import JaggedTensor
from torchrec_din import JaggedTargetAttention

def timed(fn, n=20):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]

g = torch.Generator(device="cpu").manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for b, mean in ((1024, 50), (4096, 100)):
        lengths = torch.poisson(torch.full((b,), float(mean)), generator=g).long().cuda()
        n = int(lengths.sum())
        attn = JaggedTargetAttention(32, activation="dice", validate_inputs=False,
                                     device="cuda").to(dtype)
        q = torch.randn(b, 32, device="cuda", dtype=dtype, requires_grad=True)
        v = torch.randn(n, 32, device="cuda", dtype=dtype, requires_grad=True)
        keys = JaggedTensor(values=v, lengths=lengths)
        t = timed(lambda: attn(q, keys).float().sum().backward())
        print(f"[attention] {dtype} B={b} N={n}: fwd+bwd {t * 1e3:.2f} ms, "
              f"{n / t / 1e6:.1f} M behaviours/s")

# Training step (forward + backward + Adam) and grouped serving, the MovieLens model shape.
from torchrec_din.models import DINTrain
from torchrec_din.serve import DINScorer
from torchrec_din.serve.scorer import pooled_kjt
from torchrec_din.testing.toy import toy_batch
from torchrec_din.build import build_model
from torchrec_din.config import load_config
VOCAB = {"item": 1683, "cate": 20, "user": 944, "age": 8, "gender": 3, "occupation": 22}
config = load_config("configs/movielens_din.yaml", ["model.validate_inputs=false"])
for dtype in (torch.float32, torch.bfloat16):
    model = build_model(VOCAB, config, torch.device("cuda"))
    train = DINTrain(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lengths = torch.poisson(torch.full((2048,), 50.0), generator=g).long().tolist()
    batch = toy_batch(lengths, num_items=1683, num_cates=20, num_users=944,
                      dense_in_features=0).to(torch.device("cuda"))
    batch.pooled_features = pooled_kjt(["user", "age", "gender", "occupation"],
                                       torch.zeros(2048, 4, dtype=torch.long, device="cuda"))
    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = train(batch)
        opt.zero_grad(); loss.backward(); opt.step()
    print(f"[step] {dtype} B=2048: {timed(step, 10) * 1e3:.2f} ms")
    model.eval()
    scorer = DINScorer(model).eval()
    k, h = 1000, 100
    hist = [torch.randint(1, 20, (h, 2), device="cuda")]
    args = (hist, [torch.tensor([h], device="cuda")], torch.randint(1, 20, (k, 2), device="cuda"),
            torch.tensor([k], device="cuda"),
            pooled_kjt(["user", "age", "gender", "occupation"],
                       torch.zeros(1, 4, dtype=torch.long, device="cuda")),
            torch.zeros(1, 0, device="cuda"))
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        t = timed(lambda: scorer(*args))
    print(f"[serve] {dtype} K={k} H={h}: {t * 1e3:.2f} ms, {k / t:,.0f} candidates/s")
PYEOF
' _ "$PY"
echo "[gpu_check] exit $?"
