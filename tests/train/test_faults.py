import json
import os
import signal
import sys

import pytest
import torch

from torchrec_din.cli import main
from torchrec_din.models import DINTrain
from torchrec_din.io import atomic_save, load_checkpoint

SMALL = [
    "data.synthetic.num_users=1000", "data.synthetic.num_items=300", "data.synthetic.num_cates=8",
    "data.synthetic.samples_per_user=20", "data.synthetic.max_length=40",
    "train.epochs=3", "train.batch_size=128", "train.learning_rate=0.01",
    "train.progress=false", "train.checkpoint_every=10", "model.dropout=0.2",
]


def _args(out, cache, extra=()):
    args = ["train", "--config", "configs/synthetic_din.yaml", "--output-dir", str(out)]
    for s in SMALL + [f"data.cache_dir={cache}"] + list(extra):
        args += ["--set", s]
    return args


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(tmp_path,
                                                             sigterm_once_written) -> None:
    cache = tmp_path / "cache"
    assert main(_args(tmp_path / "full", cache)) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())

    out = tmp_path / "killed"
    last = out / "last_dcp" / "meta.pt"
    code, output = sigterm_once_written(
        [sys.executable, "-m", "torchrec_din", *_args(out, cache)], last)
    assert code == 128 + signal.SIGTERM, output
    assert "progress saved" in output and "--resume" in output
    ckpt = load_checkpoint(str(last))
    assert (ckpt["epoch"], ckpt["batch"]) < (3, 0), "the run was interrupted before its end"
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]

    assert main(_args(out, cache) + ["--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    for key in ("auc", "gauc", "logloss"):
        assert resumed["test"][key] == full["test"][key], key
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in full["epochs"]]
    assert resumed["best_epoch"] == full["best_epoch"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    calls = {"n": 0}
    original = DINTrain.forward

    def poisoned(self, batch):
        loss, rest = original(self, batch)
        if isinstance(loss, torch.fx.Proxy):  # the pipeline tracing the model: no batch
            return loss, rest
        calls["n"] += 1
        if calls["n"] == 25:  # the loss trained on and the one reported, logits left finite
            loss = loss * float("nan")
            rest = (rest[0] * float("nan"),) + tuple(rest[1:])
        return loss, rest

    monkeypatch.setattr(DINTrain, "forward", poisoned)
    # The loss is read every train.sync_every (20) batches and at checkpoints (every 10):
    # the bad batch 25 is reported with the span read at batch 30, before that save.
    assert main(_args(tmp_path / "nan", tmp_path / "cache")) == 1
    err = capsys.readouterr().err
    assert "non-finite training loss at epoch 0, batches 21-30 (train.sync_every=1 names" in err
    ckpt = load_checkpoint(str(tmp_path / "nan" / "last_dcp" / "meta.pt"))
    assert ckpt["batch"] == 20  # the last checkpoint before the bad batch, untouched
    # train.sync_every=1 names the exact batch.
    calls["n"] = 0
    assert main(_args(tmp_path / "nan1", tmp_path / "cache", ["train.sync_every=1"])) == 1
    err = capsys.readouterr().err
    # The poisoned loss came after finite logits: the message says so, and names what the
    # step then spread it into.
    assert ("non-finite training loss at epoch 0, batch 25 (first non-finite: the loss alone "
            "(the logits were finite") in err, err
    assert "non-finite after the step: parameter " in err, err
    assert f"The last good progress is {tmp_path / 'nan1' / 'last_dcp'}: resume" in err, err
    # The saved model (sharded format, read back without a process group) is all finite.
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(tmp_path / "nan" / "last_dcp"), str(tmp_path / "nan_model.pt"))
    model = torch.load(str(tmp_path / "nan_model.pt"), weights_only=False)["model"]
    assert model and all(torch.isfinite(v).all() for v in model.values()
                         if isinstance(v, torch.Tensor) and v.is_floating_point())


def test_non_finite_logits_before_any_checkpoint_name_no_missing_file(tmp_path, capsys) -> None:
    # A huge learning rate blows the weights up in the first steps, before any checkpoint:
    # the error names the batch and the logits, and no checkpoint that does not exist.
    out = tmp_path / "blowup"
    assert main(_args(out, tmp_path / "cache", ["train.learning_rate=1e30",
                                                "train.sync_every=1",
                                                "train.checkpoint_every=0"])) == 1
    err = capsys.readouterr().err
    assert "non-finite training loss at epoch 0, batch " in err, err
    assert "(first non-finite: logits (" in err, err
    assert "No progress was saved before it" in err, err
    assert "last_dcp" not in err and not (out / "last_dcp").exists()


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "last.pt")
    atomic_save({"step": 1}, path)

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_bad_config_key_is_reported(capsys) -> None:
    assert main(["train", "--config", "configs/synthetic_din.yaml", "--set", "train.epoch=1"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err
