"""Early stopping: training stops when validation GAUC stops improving, keeps the best
epoch's model, and never looks at test data to decide."""

import pytest

import torchrec_din.train.engine as engine
import torchrec_din.train.sharded as loop
from torchrec_din.io import load_checkpoint
from torchrec_din.config import load_config
from torchrec_din.train.record import early_stop

SMALL = ["data.synthetic.num_users=200", "data.synthetic.num_items=100",
         "data.synthetic.num_cates=5", "data.synthetic.samples_per_user=6",
         "data.synthetic.max_length=20", "train.batch_size=64", "train.progress=false",
         "train.checkpoint_every=0"]


def _results(gaucs, best):
    return {"epochs": [{"epoch": i, "valid": {"gauc": g}} for i, g in enumerate(gaucs)],
            "best_epoch": best}


def test_rule() -> None:
    assert early_stop(_results([0.6, 0.7, 0.65], 1), 2) is None
    reason = early_stop(_results([0.6, 0.7, 0.65, 0.66], 1), 2)
    assert reason and "not improved for 2 epoch(s)" in reason and "best epoch 1: 0.7000" in reason
    assert early_stop(_results([0.6, 0.7, 0.65, 0.66], 1), 0) is None  # disabled
    assert early_stop(_results([], None), 2) is None


def test_training_stops_on_validation_and_evaluates_test_once(tmp_path, monkeypatch) -> None:
    scripted = iter([0.60, 0.70, 0.65, 0.66, 0.95, 0.96])  # would improve again at epoch 4
    calls = []
    real = engine.evaluate_split

    def fake_evaluate(backend, split, progress, desc):
        calls.append(desc)
        out = real(backend, split, progress, desc)
        if desc == "valid":
            out["gauc"] = next(scripted)
        return out

    monkeypatch.setattr(engine, "evaluate_split", fake_evaluate)
    config = load_config("configs/synthetic_din.yaml", SMALL + [
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=10", "train.patience=2"])
    results = loop.train(config, str(tmp_path / "run"))
    assert [e["epoch"] for e in results["epochs"]] == [0, 1, 2, 3]
    assert results["best_epoch"] == 1
    assert load_checkpoint(str(tmp_path / "run" / "best.pt"))["epoch"] == 1
    # Validation after every epoch; test exactly once, after training ended.
    assert calls == ["valid"] * 4 + ["test"]

    # A resumed run with a larger cap decides the same way: nothing more to train.
    calls.clear()
    more = load_config("configs/synthetic_din.yaml", SMALL + [
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=12", "train.patience=2"])
    resumed = loop.train(more, str(tmp_path / "run"), resume=True)
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2, 3] and calls == ["test"]
