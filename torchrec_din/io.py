"""Atomic file writes (a temp file in the target's folder, flushed, fsynced, then renamed)
and checkpoint files (``atomic_save`` / ``load_checkpoint``), for training and serving alike.

A kill at any moment leaves either the previous file or the new one, never half of one.
"""

import json
import math
import pickle
import re
import os
import secrets
import shutil
from typing import Any, Callable, Dict, IO

import torch

TEMP_PREFIX = ".tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str) -> int:
    """Delete temp files in ``folder`` whose writer process is gone (killed mid-write).

    Temp names carry the writer's pid (``.tmp-<pid>-...``), so a live writer's file is kept.
    Returns how many were removed.
    """
    removed = 0
    if not os.path.isdir(folder):
        return 0
    for name in os.listdir(folder):
        if not name.startswith(TEMP_PREFIX):
            continue
        pid_text = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and (int(pid_text) == os.getpid() or _pid_alive(int(pid_text))):
            continue  # a live writer's file
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _temp_name(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    # The writer's pid in the name lets remove_stale_temp_files tell dead writers' files.
    return os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{suffix}")


def atomic_write_path(path: str, produce: Callable[[str], None]) -> None:
    """For writers that take a file name (``torch.export.save``, AOTInductor packaging):
    ``produce(tmp)`` writes a temp file next to ``path``, which is then fsynced and renamed
    over ``path``."""
    tmp = _temp_name(path)
    # Created with mode 0666 so the kernel applies the umask, as for any normal file
    # (mkstemp would make it 0600 and, e.g., a serving account could not read a checkpoint).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        produce(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN / Infinity: an undefined metric is null
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def atomic_write_json(obj: Any, path: str) -> None:
    """Strict JSON (NaN and infinities written as null), atomically."""
    atomic_write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False), path)


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temp file next to ``path`` and rename it over ``path``."""
    def produce(tmp: str) -> None:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)

    atomic_write_path(path, produce)


def atomic_save(obj: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read; the message names it."""


def load_checkpoint(path: str) -> Dict[str, Any]:
    """``torch.load`` of one of our checkpoints, with errors that name the file.

    Loads with ``weights_only=True``: our checkpoints hold tensors, numbers, strings and
    containers only, and a file that asks for anything else (a pickle whose ``__reduce__``
    would run code) is refused before any of it runs."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses a pickle that names a global (a class or function to call);
        # any other unpickling error is a damaged file, handled below.
        found = re.search(r"(?i)unsupported:? GLOBAL:? ([\w.]+)", str(e))
        if found is None:
            raise CheckpointError(f"checkpoint {path} is damaged or not a torch checkpoint "
                                  "(its pickle cannot be read); restore it from a backup or "
                                  "start over with --overwrite") from None
        raise CheckpointError(
            f"checkpoint {path} holds Python objects that torchrec_din never writes "
            f"({found.group(1)}): it was made elsewhere or altered. Refused without loading "
            "it (unpickling it could run code of the file's); use only checkpoints you "
            "trust") from None
    except Exception as e:  # truncated zip, unpickling errors, EOF: all mean a damaged file
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a torch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); restore it from a backup or start "
            "over with --overwrite") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not the "
                              "dict torchrec_din writes")
    return state
