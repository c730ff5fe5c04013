"""The library imports with torch, torchrec, fbgemm and numpy alone; the built wheel installs
into an existing TorchRec environment without touching torch, torchrec or FBGEMM."""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ["torchrec_din", "torchrec_din.ops", "torchrec_din.modules", "torchrec_din.models",
           "torchrec_din.distributed", "torchrec_din.checks", "torchrec_din.batch",
           "torchrec_din.testing"]
APPLICATION = ["torchrec_din.train", "torchrec_din.data", "torchrec_din.serve",
               "torchrec_din.metrics", "torchrec_din.cli"]


def test_library_needs_no_training_extra_and_imports_no_application() -> None:
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, importlib.machinery, sys
        class Refuse(importlib.abc.Loader):
            def create_module(self, spec):
                raise ImportError("blocked for this test: " + spec.name)
            def exec_module(self, module):
                pass
        class Block:  # as if the training extra (and other optional packages) were absent
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("yaml", "tqdm", "matplotlib", "pyarrow", "sklearn"):
                    return importlib.machinery.ModuleSpec(name, Refuse())
                return None
        sys.meta_path.insert(0, Block())
        for name in {LIBRARY!r}:
            importlib.import_module(name)
        app = sorted(m for m in sys.modules if any(m == a or m.startswith(a + ".")
                                                    for a in {APPLICATION!r}))
        assert not app, "the library imported application modules: " + str(app)
        import torch
        from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections
        from torchrec_din import DIN
        ec, ebc = toy_collections()
        b = toy_batch([2, 0, 1])
        print(DIN(ec, TOY_GROUPS, ebc, 2)(b.sequence_features, b.pooled_features,
                                          b.dense_features).shape)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([3])" in proc.stdout


def _pip(python: str, *args: str) -> str:
    proc = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_wheel_installs_into_existing_torchrec_environment(tmp_path) -> None:
    # An "existing TorchRec environment": a new virtualenv that sees this one's torch,
    # torchrec, FBGEMM, numpy (and the rest) as installed, but not torchrec_din.
    site = sysconfig.get_paths()["purelib"]
    existing = tmp_path / "existing-site"
    existing.mkdir()
    for entry in os.listdir(site):
        if "torchrec_din" in entry or "torchrec-din" in entry or entry.endswith(".pth"):
            continue
        os.symlink(os.path.join(site, entry), existing / entry)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True).stdout.strip()
    with open(os.path.join(venv_site, "existing.pth"), "w") as f:
        f.write(str(existing) + "\n")  # pip itself comes from there too

    wheels = tmp_path / "wheels"
    _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         ROOT)
    (wheel,) = list(wheels.glob("torchrec_din-*.whl"))

    def versions():
        listed = json.loads(_pip(python, "list", "--format", "json"))
        return {p["name"].lower(): p["version"] for p in listed}

    before = versions()
    assert "torchrec-din" not in before
    # --no-index: nothing may be downloaded; a needed package that is not there fails here.
    report = tmp_path / "report.json"
    _pip(python, "install", "--no-index", "--report", str(report), str(wheel))
    installed = [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]]
    assert installed == ["torchrec-din"], installed
    after = versions()
    for name in ("torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu", "numpy"):
        if name in before:
            assert after[name] == before[name], name
    assert after["torchrec-din"] == "0.1.0"
    proc = subprocess.run([python, "-c", "import torchrec_din, torchrec_din.modules as m; "
                           "print(torchrec_din.__file__, m.DINInteraction)"],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(venv) in proc.stdout  # the wheel's copy, not this checkout
