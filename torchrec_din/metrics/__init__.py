"""Ranking metrics: AUC, impression-weighted GAUC (DIN paper Eq. 10), logloss."""

from torchrec_din.metrics.ranking import (  # noqa: F401
    auc,
    evaluate_predictions,
    gauc,
    gauc_standard_error,
    logloss,
    oracle_comparison,
)
