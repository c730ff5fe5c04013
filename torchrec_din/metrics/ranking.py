"""AUC, the DIN paper's impression-weighted GAUC, and logloss.

AUC and logloss are one-liners over torchrec/torch. GAUC (paper Eq. 10) is written here:
torchrec's ``GAUCMetric`` is an unweighted per-group mean over contiguous groups, while the
paper weights each user's AUC by that user's impressions. Our version is vectorised (one
sort for all users) with exact tie handling (mid-ranks).
"""

from typing import Any, Dict

import numpy as np
import torch

_EPS = 1e-7


def _as_numpy(x) -> np.ndarray:  # noqa: ANN001
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _group_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray):
    """Per-group AUC by the Mann-Whitney statistic. Returns (group ids, auc, impressions,
    valid mask) where valid means the group has both labels."""
    uniq, gidx = np.unique(groups, return_inverse=True)
    order = np.lexsort((scores, gidx))
    g, s, y = gidx[order], scores[order], labels[order]
    n = g.size
    # Position of each row within its group, 1-based.
    group_start = np.concatenate([[0], np.nonzero(np.diff(g))[0] + 1]) if n else np.zeros(0, int)
    counts = np.diff(np.concatenate([group_start, [n]]))
    pos = np.arange(n) - np.repeat(group_start, counts) + 1.0
    # Mid-ranks for ties of (group, score).
    new_block = np.ones(n, dtype=bool)
    if n > 1:
        new_block[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    block = np.cumsum(new_block) - 1
    rank = (np.bincount(block, weights=pos) / np.bincount(block))[block]
    num_groups = uniq.size
    n_pos = np.bincount(g, weights=y, minlength=num_groups)
    n_all = np.bincount(g, minlength=num_groups).astype(np.float64)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(g, weights=rank * y, minlength=num_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    auc = np.full(num_groups, np.nan)
    auc[valid] = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (
        n_pos[valid] * n_neg[valid])
    return uniq, auc, n_all, valid


def auc(scores, labels) -> float:  # noqa: ANN001
    """Area under the ROC curve (ties count one half). NaN if only one label is present."""
    s, y = _as_numpy(scores), _as_numpy(labels)
    _, a, _, _ = _group_auc(s, y, np.zeros(s.size, dtype=np.int64))
    return float(a[0]) if a.size else float("nan")


def gauc(scores, labels, groups) -> float:  # noqa: ANN001
    """The DIN paper's GAUC (Eq. 10): per-user AUC weighted by the user's impressions.

    Users whose labels are all equal have no AUC and are left out (of the weights too).
    """
    s, y, g = _as_numpy(scores), _as_numpy(labels), np.asarray(groups)
    _, a, n, valid = _group_auc(s, y, g)
    if not valid.any():
        return float("nan")
    return float(np.sum(a[valid] * n[valid]) / np.sum(n[valid]))


def logloss(probabilities, labels) -> float:  # noqa: ANN001
    """Mean binary cross-entropy of probabilities (clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(_as_numpy(probabilities), _EPS, 1 - _EPS)
    y = _as_numpy(labels)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def gauc_standard_error(scores, labels, groups, num_bootstrap: int = 200,  # noqa: ANN001
                        seed: int = 0) -> float:
    """Bootstrap (over users) standard error of :func:`gauc`."""
    s, y, g = _as_numpy(scores), _as_numpy(labels), np.asarray(groups)
    _, a, n, valid = _group_auc(s, y, g)
    a, n = a[valid], n[valid]
    if a.size < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, a.size, size=(num_bootstrap, a.size))
    values = (a[picks] * n[picks]).sum(1) / n[picks].sum(1)
    return float(values.std(ddof=1))


def evaluate_predictions(logits, labels, groups) -> Dict[str, float]:  # noqa: ANN001
    """AUC, GAUC, its bootstrap standard error, and logloss of logits against labels."""
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    probs = torch.sigmoid(logits_t)
    return {
        "auc": auc(logits_t, labels),
        "gauc": gauc(logits_t, labels, groups),
        "gauc_se": gauc_standard_error(logits_t, labels, groups),
        "logloss": logloss(probs, labels),
        "samples": int(logits_t.numel()),
    }


def oracle_comparison(model: Dict[str, float], true_prob: Any, labels: Any,
                      groups: Any) -> Dict[str, Any]:
    """Where the data's truth is known: the best possible AUC and GAUC of the split (scoring
    every sample by its true click probability) and the share of the possible lift over 0.5
    that ``model`` (evaluate_predictions' output) reaches, per metric."""
    p = torch.as_tensor(true_prob, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    best = evaluate_predictions(torch.logit(p), labels, groups)
    share = {k: (model[k] - 0.5) / (best[k] - 0.5) if best[k] > 0.5 else float("nan")
             for k in ("auc", "gauc")}
    return {"best_possible": {k: best[k] for k in ("auc", "gauc", "logloss")},
            "lift_share": share}
