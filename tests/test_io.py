"""Checkpoint files: loading one runs no code of the file's."""

import os
import pickle

import torch

from torchrec_din.cli import main


class _RunsACommand:
    """What a crafted checkpoint carries: unpickling it would call os.system."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_before_its_code_runs(tmp_path, capsys) -> None:
    marker = tmp_path / "the_file_ran_code"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "vocab": {}, "config": _RunsACommand(str(marker))},
               str(run / "best.pt"))
    # The plain pickle module would run it: the plant is real.
    with open(run / "best.pt", "rb") as f:
        assert f.read(2) == b"PK"  # a torch zip checkpoint
    pickle.loads(pickle.dumps(_RunsACommand(str(tmp_path / "control"))))
    assert (tmp_path / "control").exists()

    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"id": 1, "candidates": {"item": [1]}}\n')
    for argv in (["score", "--checkpoint", str(run), "--input", str(requests), "--output",
                  str(tmp_path / "scores.jsonl")],
                 ["export", "--checkpoint", str(run), "--output", str(tmp_path / "s.pt2")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"checkpoint {run / 'best.pt'} holds Python objects that torchrec_din never " \
               "writes (posix.system)" in err, err
        assert not marker.exists()
