import json
import os

import pytest
import torch

from torchrec_din.cli import main
from torchrec_din.io import load_checkpoint

TINY = [
    "data.synthetic.num_users=300", "data.synthetic.num_items=200", "data.synthetic.num_cates=8",
    "data.synthetic.samples_per_user=20", "data.synthetic.max_length=50",
    "train.epochs=2", "train.batch_size=128", "train.learning_rate=0.01", "train.progress=false",
]


@pytest.mark.parametrize("extra", [
    [],
    ["model.name=base", "train.regularization=l2", "train.l2_lambda=0.0001",
     "train.keep_freed_memory=false"],
    ["model.attention_activation=dice", "model.over_arch_activation=dice",
     "model.attention_normalization=softmax", "train.regularization=mba",
     "train.l2_lambda=0.01", "model.dropout=0.1"],
])
def test_synthetic_run_writes_everything(tmp_path, monkeypatch, extra) -> None:
    kept = []  # the malloc setting is process-wide: recorded here, tested in test_allocator
    monkeypatch.setattr("torchrec_din.train.engine.keep_freed_memory",
                        lambda: kept.append(True) or True)
    out = tmp_path / "run"
    sets = TINY + [f"data.cache_dir={tmp_path / 'cache'}"] + extra
    args = ["train", "--config", "configs/synthetic_din.yaml", "--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    assert kept == ([] if "train.keep_freed_memory=false" in extra else [True])
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1]
    valid_gauc = [e["valid"]["gauc"] for e in metrics["epochs"]]
    assert metrics["best_epoch"] == int(max(range(2), key=lambda i: valid_gauc[i]))
    test = metrics["test"]
    for key in ("auc", "gauc", "logloss", "samples_per_sec"):
        assert isinstance(test[key], float)
    assert 0.55 < test["auc"] <= 1.0  # the planted signal is learnable
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "config.yaml").exists()
    best = load_checkpoint(str(out / "best.pt"))
    assert best["epoch"] == metrics["best_epoch"]
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


@pytest.mark.parametrize("grouped", [False, True])
def test_movielens_short_run(tmp_path, grouped) -> None:
    out = tmp_path / "ml"
    args = ["train", "--config", "configs/movielens_din.yaml", "--output-dir", str(out),
            "--set", "train.epochs=1", "--set", "train.progress=false",
            "--set", "data.max_history=20", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "data.protocol=next_item", "--set", "data.valid_per_user=5",
            "--set", "data.test_per_user=5", "--set", f"data.group_histories={str(grouped).lower()}"]
    if grouped:  # batch_size counts histories of 2 samples each: the same samples per step
        args += ["--set", "train.batch_size=128"]
    torch.manual_seed(0)
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["samples"] == 9430
    # one epoch already beats chance clearly on real data
    assert metrics["test"]["gauc"] > 0.75
