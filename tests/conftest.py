import os

import pytest
import torch
from hypothesis import settings

# Two cores in CI: keep property tests bounded and deterministic.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def load_example(name: str):
    """``examples/<name>.py`` as a module (the examples are scripts, not a package). Test
    modules import it as ``from conftest import load_example``: tests/ is on sys.path (also
    in the worker processes of run_multi_process_func, which inherit it)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(root, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sigterm_once_written(cmd, path, timeout=300):
    """Start ``cmd``, send it SIGTERM as soon as ``path`` exists (a first checkpoint), and
    return (exit code, combined output)."""
    import signal
    import subprocess
    import time

    # The child computes with this process's thread count (set above; an OMP_NUM_THREADS
    # in the environment would otherwise give it another), so the float sums of a run it
    # starts match the ones this process computes bit for bit.
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=timeout)[0].decode()
    return proc.returncode, output


@pytest.fixture
def sigterm_once_written():
    """A function: run a command and SIGTERM it once a given file exists."""
    return _sigterm_once_written
