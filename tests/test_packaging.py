"""The library imports with torch, torchrec, fbgemm and numpy alone; the built wheel installs
into an existing TorchRec environment without touching torch, torchrec or FBGEMM."""

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import textwrap
from typing import Dict, List, Optional, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ["torchrec_din", "torchrec_din.ops", "torchrec_din.modules", "torchrec_din.models",
           "torchrec_din.distributed", "torchrec_din.checks", "torchrec_din.batch",
           "torchrec_din.testing", "torchrec_din.export", "torchrec_din.grouped",
           "torchrec_din.io", "torchrec_din.allocator"]
APPLICATION = ["torchrec_din.train", "torchrec_din.data", "torchrec_din.serve",
               "torchrec_din.metrics", "torchrec_din.cli", "torchrec_din.config",
               "torchrec_din.build", "torchrec_din.planning", "torchrec_din.__main__"]
# What each part of the application may not import (dependencies point one way:
# library <- data, metrics <- config, build, planning <- serve, train <- cli).
FORBIDDEN = {
    "torchrec_din.data": ["torchrec_din.train", "torchrec_din.serve", "torchrec_din.cli"],
    "torchrec_din.metrics": ["torchrec_din.train", "torchrec_din.serve", "torchrec_din.cli",
                             "torchrec_din.data"],
    "torchrec_din.config": ["torchrec_din.train", "torchrec_din.serve", "torchrec_din.cli"],
    "torchrec_din.build": ["torchrec_din.train", "torchrec_din.serve", "torchrec_din.cli"],
    "torchrec_din.planning": ["torchrec_din.train", "torchrec_din.serve", "torchrec_din.cli"],
    "torchrec_din.serve": ["torchrec_din.train", "torchrec_din.cli"],
    "torchrec_din.train": ["torchrec_din.serve", "torchrec_din.cli"],
    # The engine knows backends only through its Backend interface.
    "torchrec_din.train.engine": ["torchrec_din.train.sharded"],
}
LIBRARY_THIRD_PARTY = {"torch", "torchrec", "fbgemm_gpu", "numpy"}


def _modules() -> Dict[str, str]:
    """Every module of the package: dotted name -> file."""
    out = {}
    base = os.path.join(ROOT, "torchrec_din")
    for folder, _, files in os.walk(base):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = \
                    os.path.join(folder, f)
    return out


def _imports(path: str, package: str) -> List[Tuple[str, Optional[str]]]:
    """(imported module, the function it is imported in or None for module level)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found: List[Tuple[str, Optional[str]]] = []

    def visit(node: ast.AST, function: Optional[str]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef,
                                                     ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                found.extend((a.name, function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against the package
                    parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                    mod = ".".join(parts + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                found.append((mod, function))
                # "from torchrec_din.data import registry" imports a module too
                found.extend((f"{mod}.{a.name}", function) for a in child.names)
            visit(child, inner)

    visit(tree, None)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_import_rules_hold_for_every_module() -> None:
    """The layering, checked on every module's imports (lazy ones inside functions too)."""
    modules = _modules()
    assert {"torchrec_din.train.engine", "torchrec_din.train.sharded", "torchrec_din.cli",
            "torchrec_din.data.registry", "torchrec_din.serve.export"} <= set(modules)
    stdlib = set(sys.stdlib_module_names)
    problems: List[str] = []
    for name, path in sorted(modules.items()):
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        library = not any(_within(name, a) for a in APPLICATION)
        for imported, function in _imports(path, package):
            top = imported.split(".")[0]
            if library:
                if top == "torchrec_din" and any(_within(imported, a) for a in APPLICATION):
                    problems.append(f"library module {name} imports {imported}")
                if top not in stdlib and top not in LIBRARY_THIRD_PARTY | {"torchrec_din"}:
                    problems.append(f"library module {name} imports {imported} (not a core "
                                    "dependency)")
            for part, banned in FORBIDDEN.items():
                if _within(name, part):
                    problems += [f"{name} imports {imported}" for b in banned
                                 if _within(imported, b)]
            if name == "torchrec_din.cli" and _within(imported, "torchrec_din.train") \
                    and function != "_train_command":
                problems.append(f"cli imports {imported} outside its train command "
                                f"({function or 'module level'})")
    assert not problems, "\n".join(problems)


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


def readme_recipe(name: str) -> List[List[str]]:
    """The command lines of the README's ``<!-- recipe: name -->`` block, split like a
    shell would, comments dropped."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"<!-- recipe: " + re.escape(name) + r" -->\n```bash\n(.*?)```", readme,
                      re.S)
    assert block, f"README: no install recipe {name!r}"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    lines = [words for words in lines if words]
    assert lines and all(words[:2] == ["pip", "install"] for words in lines), lines
    return lines


def _as_run(words: List[str], python: str, paths: Dict[str, str]) -> List[str]:
    """A README line for ``python``'s pip, the README's placeholder paths replaced."""
    out = [python, "-m", "pip", "--disable-pip-version-check"]
    for word in words[1:]:
        for placeholder, path in paths.items():  # longest placeholders first
            word = word.replace(placeholder, path)
        out.append(word)
    return out


def _versions(python: str) -> Dict[str, str]:
    listed = json.loads(_pip(python, "list", "--format", "json"))
    return {p["name"].lower().replace("_", "-"): p["version"] for p in listed}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    wheels = tmp_path_factory.mktemp("wheels")
    _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         ROOT)
    (built,) = list(wheels.glob("torchrec_din-*.whl"))
    return str(built)


def _paths(wheel: str) -> Dict[str, str]:
    return {"/path/to/" + os.path.basename(wheel): wheel, "/path/to/torchrec_din": ROOT}


@pytest.mark.parametrize("line", range(3))
def test_readme_recipe_for_an_existing_torchrec_environment(tmp_path, wheel, line) -> None:
    """Each ``existing`` line, as printed, in a new virtualenv that sees this one's torch,
    torchrec, FBGEMM, numpy (and the rest) as installed, but not torchrec_din: only
    torchrec-din is installed, and the installed copy imports."""
    recipe = readme_recipe("existing")
    assert len(recipe) == 3
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

    before = _versions(python)
    assert "torchrec-din" not in before
    cmd = _as_run(recipe[line], python, _paths(wheel))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = _versions(python)
    assert set(after) - set(before) == {"torchrec-din"}, set(after) - set(before)
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, changed
    assert after["torchrec-din"] == "0.1.0"
    proc = subprocess.run([python, "-c", "import torchrec_din, torchrec_din.modules as m; "
                           "print(torchrec_din.__file__, m.DINInteraction)"],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(venv) in proc.stdout  # the installed copy, not this checkout


def test_readme_recipe_for_a_cpu_only_torchrec_environment(tmp_path) -> None:
    """The ``cpu-existing`` lines, as printed, in the environment the README describes: torch
    2.13.0 (CPU), torchrec 1.8.0 installed with --no-deps and its other requirements, and
    fbgemm-gpu-cpu 1.8.0. Without the stand-in, pip would pull the CUDA fbgemm-gpu here."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    _pip(python, "install", "-q", "torch==2.13.0", "fbgemm-gpu-cpu==1.8.0")
    _pip(python, "install", "-q", "--no-deps", "torchrec==1.8.0")
    needs = subprocess.run(
        [python, "-c", "from importlib.metadata import requires; print('\\n'.join("
         "r for r in requires('torchrec') if not r.startswith('fbgemm') and 'extra' not in r))"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    _pip(python, "install", "-q", *needs)
    before = _versions(python)
    for line in readme_recipe("cpu-existing"):
        proc = subprocess.run(_as_run(line, python, {"/path/to/torchrec_din": ROOT}),
                              capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = _versions(python)
    for name in ("torch", "torchrec", "fbgemm-gpu-cpu", "numpy"):
        assert after[name] == before[name], (name, before[name], after[name])
    assert after["fbgemm-gpu"].endswith("+cpushim"), after["fbgemm-gpu"]  # not the CUDA build
    _pip(python, "check")
    proc = subprocess.run([python, "-c", textwrap.dedent("""
        import torch, yaml, tqdm, matplotlib, pyarrow
        import torchrec_din
        from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections
        ec, ebc = toy_collections()
        b = toy_batch([2, 0, 1])
        out = torchrec_din.DIN(ec, TOY_GROUPS, ebc, 2)(b.sequence_features, b.pooled_features,
                                                      b.dense_features)
        print(torchrec_din.__file__, tuple(out.shape))
    """)], capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(venv) in proc.stdout and "(3,)" in proc.stdout


def test_readme_recipe_for_a_new_gpu_environment_resolves_cuda_fbgemm(tmp_path) -> None:
    """The ``gpu-new`` line, as printed plus ``--dry-run --report`` (a CPU machine cannot run
    the CUDA build): the CUDA fbgemm-gpu of the line and no CPU build."""
    (line,) = readme_recipe("gpu-new")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = tmp_path / "report.json"
    cmd = _as_run(line, str(venv / "bin" / "python"), {"/path/to/torchrec_din": ROOT})
    proc = subprocess.run(cmd + ["--dry-run", "-q", "--report", str(report)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}
    assert got["fbgemm-gpu"] == "1.9.0", got
    assert "fbgemm-gpu-cpu" not in got, got
    assert got["torch"] == "2.14.1" and got["torchrec"].startswith("1.9."), got
    assert got["torchrec-din"] == "0.1.0"


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
