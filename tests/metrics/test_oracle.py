"""The best possible AUC of planted data is computed right: a model that outputs the true
probability reaches it (share 100%), a constant reaches none of the lift."""

import json

import numpy as np
import pytest
import torch

from torchrec_din.cli import main
from torchrec_din.data.synthetic import generate_synthetic
from torchrec_din.metrics import evaluate_predictions, oracle_comparison


def test_the_true_probability_reaches_the_best_possible_auc() -> None:
    table = generate_synthetic(num_users=300, num_items=200, num_cates=10, samples_per_user=10)
    p, labels, users = table.true_prob, table.label, table.user_row
    assert p.shape == labels.shape and ((p > 0) & (p < 1)).all()
    # The planted rule: labels are Bernoulli(p), so positives have higher p on average.
    assert p[labels == 1].mean() > p[labels == 0].mean() + 0.1
    logits = torch.logit(torch.as_tensor(p, dtype=torch.float64))
    oracle = oracle_comparison(evaluate_predictions(logits, labels, users), p, labels, users)
    assert oracle["lift_share"]["auc"] == pytest.approx(1.0)
    assert oracle["lift_share"]["gauc"] == pytest.approx(1.0)
    assert 0.6 < oracle["best_possible"]["auc"] < 0.95
    noise = torch.as_tensor(np.random.default_rng(0).normal(size=p.size))
    random = oracle_comparison(evaluate_predictions(noise, labels, users), p, labels, users)
    assert abs(random["lift_share"]["auc"]) < 0.15


def test_synthetic_runs_report_the_best_possible_auc(tmp_path, capsys) -> None:
    sets = ["data.synthetic.num_users=150", "data.synthetic.num_items=80",
            "data.synthetic.samples_per_user=6", "data.synthetic.max_length=15",
            "train.epochs=1", "train.progress=false", f"data.cache_dir={tmp_path / 'c'}"]
    assert main(["train", "--config", "configs/synthetic_din.yaml", "--output-dir",
                 str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]]) == 0
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert set(test["best_possible"]) == {"auc", "gauc", "logloss"}
    assert test["lift_share"]["auc"] == pytest.approx(
        (test["auc"] - 0.5) / (test["best_possible"]["auc"] - 0.5))
    assert "of the possible lift" in capsys.readouterr().out
