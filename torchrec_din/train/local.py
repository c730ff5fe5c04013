"""Single-process training: the engine's :class:`LocalBackend` and batch prediction."""

import os
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from torchrec_din.batch import DINBatch
from torchrec_din.data.source import DataSource, EpochLoader, SplitData
from torchrec_din.models import compile_dense, DINModel, DINTrain
from torchrec_din.build import build_model
from torchrec_din.config import resolve_device
from torchrec_din.io import atomic_save, load_checkpoint
from torchrec_din.train.engine import Backend, describe_non_finite, run_training
from torchrec_din.train.optim import apply_train_config, make_optimizer
from torchrec_din.train.regularization import make_regularizer, MBAPenalty, table_weights


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


class LocalBackend(Backend):
    """One process: a plain optimizer over every parameter, ``torch.save`` checkpoints
    (``last.pt``: model, optimizer, RNG and progress; ``best.pt``: the best epoch's model),
    and the MBA penalty on the tables' rows when ``train.regularization=mba``."""

    def __init__(self) -> None:
        self.model: Optional[DINModel] = None
        self.last_logits: Optional[torch.Tensor] = None  # the last step's, for error reports

    def read_progress(self, output_dir: str) -> Dict[str, Any]:
        self.progress_path = os.path.join(output_dir, "last.pt")
        saved = load_checkpoint(self.progress_path)
        saved.setdefault("world_size", 1)
        if isinstance(saved.get("totals"), dict):  # written before the engine was shared
            saved["totals"] = [saved["totals"]]
        return saved

    def check_resume(self, saved: Dict[str, Any], config: Dict[str, Any]) -> None:
        if saved["world_size"] != 1:
            raise ValueError(f"{self.progress_path} is not a single-process checkpoint")

    def setup(self, config: Dict[str, Any], source: DataSource,
              splits: Dict[str, SplitData], output_dir: str) -> None:
        train_cfg, data_cfg = config["train"], config["data"]
        self.output_dir = output_dir
        self.progress_path = os.path.join(output_dir, "last.pt")
        self.device = resolve_device(train_cfg["device"])
        self.model = build_model(source.vocab, config, self.device)
        self.compiled = bool(train_cfg["compile"])
        self._compile_reported = False  # the first step's compile time is printed once
        if self.compiled:
            compile_dense(self.model)
        mba = make_regularizer(self.model, source, train_cfg)
        penalty = None if mba is None else MBAPenalty(mba.to(self.device),
                                                     table_weights(self.model))
        self.train_model = DINTrain(self.model, source.shared_histories, penalty)
        self.optimizer = make_optimizer(self.model.parameters(), train_cfg)
        self.eval_loaders = {id(splits[s]): splits[s].loader(int(config["seed"]),
                                                             int(data_cfg["num_workers"]))
                             for s in ("valid", "test")}

    def restore_progress(self, saved: Dict[str, Any], config: Dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        apply_train_config(self.optimizer, config["train"])  # a changed learning rate applies
        torch.set_rng_state(saved["rng"])

    def train_batches(self, loader: EpochLoader) -> Iterator[Tuple[torch.Tensor, int]]:
        self.model.train()
        first = self.compiled and not self._compile_reported
        for batch in loader:
            start = time.perf_counter()
            batch = batch.to(self.device, non_blocking=True)
            loss, (_, self.last_logits, _) = self.train_model(batch)  # MBA penalty included
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            if first:  # the first step compiles the forward and backward graphs
                first, self._compile_reported = False, True
                print(f"[compile] first step {time.perf_counter() - start:.1f} s "
                      f"(torch.compile of the dense part, dynamic shapes)")
            yield loss.detach(), int(batch.labels.numel())
        if self.compiled:
            from torch._dynamo.utils import counters

            print(f"[compile] graphs compiled so far: {counters['stats']['unique_graphs']} "
                  f"(more than the first epoch's means ragged batches recompiled)")

    def non_finite_report(self) -> str:
        return describe_non_finite(self.last_logits, self.model)

    def predict(self, split: SplitData, progress: bool,
                desc: str) -> Tuple[Optional[np.ndarray], float]:
        loader = self.eval_loaders.get(id(split)) or split.loader(0, 0)
        start = time.perf_counter()
        logits, labels, _ = predict(self.model, loader, progress, desc)
        elapsed = time.perf_counter() - start
        # Metrics pair logits with the split's labels and groups by position: a loader that
        # yields out of order would give silently wrong metrics, so check the labels it gave.
        if not np.array_equal(labels, np.asarray(split.labels(), labels.dtype)):
            raise RuntimeError(f"{desc}: the loader's batches are not in the split's order "
                               "(their labels differ from the split's); metrics would pair "
                               "predictions with the wrong labels")
        return logits, elapsed

    def save_progress(self, record: Dict[str, Any]) -> None:
        atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "rng": torch.get_rng_state(), **record}, self.progress_path)

    def save_best(self, epoch: int, config: Dict[str, Any], vocab: Dict[str, int],
                  serving: Dict[str, Any]) -> None:
        atomic_save({"model": self.model.state_dict(), "epoch": epoch, "config": config,
                     "vocab": vocab, "serving": serving}, os.path.join(self.output_dir, "best.pt"))

    def load_best(self) -> None:
        best = load_checkpoint(os.path.join(self.output_dir, "best.pt"))
        self.model.load_state_dict(best["model"])


def train(config: Dict[str, Any], output_dir: str, resume: bool = False,
          overwrite: bool = False) -> Dict[str, Any]:
    """Single-process training (see :func:`torchrec_din.train.engine.run_training`).

    Writes ``config.yaml``, ``metrics.json``, ``curves.png``, ``best.pt`` (model of the best
    epoch) and ``last.pt`` (all progress: model, optimizer, RNG, position in the epoch) to
    ``output_dir``.

    Returns:
        Dict[str, Any]: the content of metrics.json.
    """
    results = run_training(LocalBackend(), config, output_dir, resume, overwrite)
    assert results is not None  # one process is rank 0
    return results
