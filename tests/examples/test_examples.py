"""The examples run as their docstrings say."""

import os
import subprocess
import sys

import torch

from conftest import load_example  # tests/conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_your_own_model_under_torchrun(tmp_path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           os.path.join(ROOT, "examples", "your_own_model.py"), "--steps", "40",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "DIN part scripted by the pipeline (RecursiveScriptModule)" in proc.stdout
    assert "[serve] int8 + fx + TorchScript scores equal eager int8" in proc.stdout
    # The saved int8 model loads and scores a request (FBGEMM's ops must be registered
    # first: import fbgemm_gpu, or torchrec, which imports it).
    import fbgemm_gpu  # noqa: F401

    served = torch.jit.load(str(tmp_path / "ranker_int8.pt"))
    example = load_example("your_own_model")
    batch = example.make_batch(16, torch.Generator().manual_seed(3))
    scores = served(batch.sequence_features, batch.pooled_features, batch.dense_features)
    assert scores.shape == (16,) and torch.isfinite(scores).all()


def test_mixed_dims_under_torchrun() -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           os.path.join(ROOT, "examples", "mixed_dims.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "[train] 100 steps on 2 ranks" in proc.stdout


def test_din_interaction_example() -> None:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "din_interaction.py")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("logits:")
