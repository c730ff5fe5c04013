import os

import pytest
import torch
from hypothesis import settings

# Two cores in CI: keep property tests bounded and deterministic.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _sigterm_once_written(cmd, path, timeout=300):
    """Start ``cmd``, send it SIGTERM as soon as ``path`` exists (a first checkpoint), and
    return (exit code, combined output)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
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
