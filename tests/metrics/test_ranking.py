import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from torchrec_din.metrics import auc, evaluate_predictions, gauc, logloss


def _sklearn_gauc(scores, labels, groups):
    total, weight = 0.0, 0
    for g in np.unique(groups):
        m = groups == g
        if labels[m].min() == labels[m].max():
            continue
        total += roc_auc_score(labels[m], scores[m]) * m.sum()
        weight += m.sum()
    return total / weight


@given(st.integers(0, 10_000), st.integers(2, 300), st.booleans())
def test_auc_matches_sklearn(seed, n, ties) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 5, n).astype(float) if ties else rng.normal(size=n)
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@given(st.integers(0, 10_000), st.booleans())
def test_gauc_matches_per_user_sklearn(seed, ties) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    groups = rng.integers(0, 30, n)
    labels = rng.integers(0, 2, n)
    scores = rng.integers(0, 4, n).astype(float) if ties else rng.normal(size=n)
    assert gauc(scores, labels, groups) == pytest.approx(
        _sklearn_gauc(scores, labels, groups), abs=1e-12)


def test_gauc_weights_by_impressions_and_skips_single_label_users() -> None:
    # user 1: 4 impressions, AUC 1; user 2: 2 impressions, AUC 0; user 3: all positive.
    groups = np.array([1, 1, 1, 1, 2, 2, 3, 3])
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.1, 0.9, 0.5, 0.5])
    assert gauc(scores, labels, groups) == pytest.approx((4 * 1.0 + 2 * 0.0) / 6)


def test_logloss_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 100)
    y = rng.integers(0, 2, 100)
    assert logloss(p, y) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_evaluate_predictions_on_logits() -> None:
    logits = torch.tensor([-2.0, 1.0, 3.0, -1.0])
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    out = evaluate_predictions(logits, labels, np.array([0, 0, 1, 1]))
    assert out["auc"] == 1.0 and out["gauc"] == 1.0
    assert out["logloss"] == pytest.approx(log_loss(labels, torch.sigmoid(logits)), rel=1e-6)


def test_single_label_gives_nan() -> None:
    assert np.isnan(auc([0.1, 0.2], [1, 1]))
    assert np.isnan(gauc([0.1, 0.2], [1, 1], [0, 0]))
