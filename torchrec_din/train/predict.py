"""Batch prediction with an unsharded model in one process (evaluation scripts, tests)."""

import time
from typing import Iterable, List, Tuple

import numpy as np
import torch
from tqdm import tqdm

from torchrec_din.batch import DINBatch
from torchrec_din.models import DINModel


@torch.no_grad()
def predict(model: DINModel, loader: Iterable[DINBatch], progress: bool = False,
            desc: str = "eval") -> Tuple[np.ndarray, np.ndarray, float]:
    """Logits and labels over a loader (in order), and samples per second."""
    model.eval()
    logits: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    start = time.perf_counter()
    device = next(model.parameters()).device
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        labels.append(batch.labels)
        batch = batch.to(device, non_blocking=True)
        logits.append(model(batch.sequence_features, batch.pooled_features,
                            batch.dense_features).cpu())
    elapsed = time.perf_counter() - start
    out = torch.cat(logits).numpy() if logits else np.zeros(0)
    lab = torch.cat(labels).numpy() if labels else np.zeros(0)
    return out, lab, out.size / max(elapsed, 1e-9)
