"""A run folder: one run at a time (a lock), never silently overwritten, no stale temp files.

A run folder holds ``config.yaml``, ``metrics.json``, ``curves.png``, ``best.pt``,
``last.pt`` (and ``best_dcp/``, ``last_dcp/`` for sharded runs). A new run into a folder that
holds one needs ``--resume`` (continue it) or ``--overwrite`` (start over). ``--overwrite``
moves the old files into ``.replaced/`` once the new run's config and data are checked, and
deletes them only when the new run has written its first progress checkpoint (it is then
resumable). A run that fails before that point leaves the folder as it found it: its own
files are removed and the replaced ones moved back.
"""

import errno
import fcntl
import os
import shutil
from typing import IO, List, Optional

from torchrec_din.io import remove_stale_temp_files

RUN_FILES = ("config.yaml", "metrics.json", "curves.png", "best.pt", "last.pt", "best_dcp",
             "last_dcp")


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says what to do."""


def existing_run_files(output_dir: str) -> List[str]:
    return [f for f in RUN_FILES if os.path.exists(os.path.join(output_dir, f))]


class RunLock:
    """An exclusive lock on ``<output_dir>/.lock`` for the life of a run.

    ``flock`` is released by the kernel when the process dies, even by kill -9, so a crashed
    run never leaves the folder locked.
    """

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, ".lock")
        self._file: Optional[IO[str]] = None

    def __enter__(self) -> "RunLock":
        if os.path.lexists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise RunDirError(f"--output-dir {self.output_dir} is a file, not a folder; "
                              "choose another --output-dir")
        os.makedirs(self.output_dir, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise RunDirError(f"{self.output_dir} is in use by another run (pid {holder}); wait "
                              "for it to finish or choose another --output-dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        removed = remove_stale_temp_files(self.output_dir)
        if removed:
            print(f"[run] removed {removed} temp file(s) left by a killed run in "
                  f"{self.output_dir}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def check_run_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an old one, or to resume nothing."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; choose one")
    existing = existing_run_files(output_dir)
    if resume:
        if not ({"last.pt", "last_dcp"} & set(existing)):
            raise RunDirError(f"nothing to resume in {output_dir}: it has no last.pt (or "
                              "last_dcp/); start a new run without --resume")
        return
    if existing and not overwrite:
        raise RunDirError(
            f"{output_dir} already holds a run ({', '.join(existing)}); continue it with "
            "--resume, start over with --overwrite (deletes those files), or choose another "
            "--output-dir")


def clear_run_files(output_dir: str) -> None:
    """Remove the run files in ``output_dir`` (a failed new run's, before the replaced ones
    are moved back)."""
    for name in existing_run_files(output_dir):
        _remove(os.path.join(output_dir, name))


REPLACED = ".replaced"


def set_aside_run_files(output_dir: str) -> None:
    """``--overwrite``: move the old run's files into ``<output_dir>/.replaced/`` (one rename
    each), where :func:`restore_run_files` finds them if the new run fails early. A
    ``.replaced/`` left by an earlier overwrite that never got that far already holds the
    run to keep; files next to it are that failed run's and are removed."""
    backup = os.path.join(output_dir, REPLACED)
    os.makedirs(backup, exist_ok=True)
    for name in existing_run_files(output_dir):
        path = os.path.join(output_dir, name)
        if os.path.lexists(os.path.join(backup, name)):
            _remove(path)
        else:
            os.replace(path, os.path.join(backup, name))


def restore_run_files(output_dir: str) -> None:
    """Undo a run that failed before its first checkpoint: remove its files and move back
    what ``--overwrite`` set aside."""
    clear_run_files(output_dir)
    backup = os.path.join(output_dir, REPLACED)
    if os.path.isdir(backup):
        for name in os.listdir(backup):
            os.replace(os.path.join(backup, name), os.path.join(output_dir, name))
        os.rmdir(backup)


def drop_replaced(output_dir: str) -> None:
    """The new run is resumable: the files it replaced go for good."""
    backup = os.path.join(output_dir, REPLACED)
    if os.path.isdir(backup):
        shutil.rmtree(backup)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
