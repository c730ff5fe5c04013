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
           "torchrec_din.testing", "torchrec_din.export", "torchrec_din.grouped"]
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


# torch minor -> the FBGEMM minor built against it (fbgemm_gpu's own table), for the lines
# pyproject.toml admits. A clean install must resolve to one of these pairs.
FBGEMM_FOR_TORCH = {"2.13": "1.8", "2.14": "1.9"}


def test_a_clean_install_resolves_to_a_tested_pairing(tmp_path) -> None:
    """`pip install torchrec-din[train]` in a clean environment, resolved against the package
    index (no local wheels, no local caps): torch, FBGEMM and torchrec land on one release
    line that imports together. Fails the day a new torch or FBGEMM release breaks that."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = tmp_path / "report.json"
    cert = os.environ.get("PIP_CERT")
    args = [str(venv / "bin" / "python"), "-m", "pip", "install", "--isolated",
            "--disable-pip-version-check", "-q", "--dry-run", "--ignore-installed",
            "--report", str(report)] + (["--cert", cert] if cert else []) + [f"{ROOT}[train]"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}
    torch_minor = ".".join(got["torch"].split(".")[:2])
    fbgemm = got.get("fbgemm-gpu") or got.get("fbgemm-gpu-cpu")
    assert torch_minor in FBGEMM_FOR_TORCH, got
    assert fbgemm is not None and fbgemm.startswith(FBGEMM_FOR_TORCH[torch_minor] + "."), got
    assert got["torchrec"].startswith(FBGEMM_FOR_TORCH[torch_minor] + "."), got
