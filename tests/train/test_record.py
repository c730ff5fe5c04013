"""The run record: the best epoch by the configured selection metric, the epoch line and
the plot from one metric list, metrics.json and curves.png written."""

import json

import pytest

from torchrec_din.train.record import RunRecord, SHOWN


def _valid(auc, gauc, logloss):
    return {"auc": auc, "gauc": gauc, "logloss": logloss, "samples": 10}


EPOCHS = [_valid(0.70, 0.66, 0.60), _valid(0.74, 0.64, 0.58), _valid(0.72, 0.69, 0.62)]


@pytest.mark.parametrize("metric,best", [("gauc", 2), ("auc", 1), ("logloss", 1)])
def test_best_epoch_follows_the_selection_metric(metric, best) -> None:
    record = RunRecord(metric, {"train": {"samples": 10}}, {"dataset": "x"}, world=1)
    improved = [record.add_epoch(e, 0.5, 100.0, v) for e, v in enumerate(EPOCHS)]
    assert record.results["best_epoch"] == best
    assert improved[0] and improved[best] and sum(improved) == len(set([0, best]))
    assert record.results["select_metric"] == metric
    # early stopping reads the same metric
    record.add_epoch(3, 0.5, 100.0, _valid(0.5, 0.5, 0.9))
    reason = record.stop_reason(patience=3 - best)
    assert reason and f"best epoch {best}" in reason


def test_line_plot_and_files_come_from_one_metric_list(tmp_path) -> None:
    record = RunRecord("gauc", {}, {}, world=2)
    for e, v in enumerate(EPOCHS):
        record.add_epoch(e, 0.5 - 0.1 * e, 1000.0, v)
    line = record.epoch_line(1)
    assert line == ("[epoch 1] loss 0.4000  valid auc 0.7400 gauc 0.6400 logloss 0.5800  "
                    "1000 samples/s (2 ranks)")
    assert all(f"{m.key} " in line for m in SHOWN)
    record.write(str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["best_epoch"] == 2 and len(saved["epochs"]) == 3
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # atomic writes
    summary = record.finish({"auc": 0.7, "gauc": 0.6, "gauc_se": 0.01, "logloss": 0.5,
                             "samples": 10}, {"gauc": 0.55}, str(tmp_path))
    assert summary.startswith("[test] best epoch 2: auc 0.7000")
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["train_samples_per_sec"] \
        == 1000.0


def test_an_unknown_selection_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="train.select_metric must be one of"):
        RunRecord("ndcg", {}, {}, world=1)


def test_restoring_a_record_saved_before_it_had_its_own_key() -> None:
    record = RunRecord("gauc", {}, {}, world=1)
    record.restore({"results": {"epochs": [], "best_epoch": None, "world_size": 1},
                    "best_gauc": -float("inf"), "train_speeds": []}, world=2)
    assert record.best is None and record.results["world_size"] == 2
    assert record.add_epoch(0, 0.5, 1.0, EPOCHS[0])
