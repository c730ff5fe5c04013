"""Single-process training and evaluation of DIN / BaseModel from a run configuration."""

import os
import signal
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from torchrec_din.data.loader import DINDataset, make_loader
from torchrec_din.data.samples import SampleTable
from torchrec_din.metrics import evaluate_predictions
from torchrec_din.models import DINModel, DINTrain
from torchrec_din.train.builder import build_model, build_table
from torchrec_din.train.checkpoint import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    check_resumable,
    load_checkpoint,
)
from torchrec_din.train.rundir import clear_run_files
from torchrec_din.train.regularization import MiniBatchAwareL2, training_frequencies


def make_optimizer(params: Iterable[torch.nn.Parameter],
                   train_cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``params``; plain L2 (``regularization: l2``) is weight decay,
    while "mba" regularises embeddings in the loss."""
    optimizers = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
    name = train_cfg["optimizer"]
    if name not in optimizers:
        raise ValueError(f"train.optimizer must be adam, adagrad or sgd, got {name!r}")
    return optimizers[name](params, lr=train_cfg["learning_rate"],
                            weight_decay=_weight_decay(train_cfg))


def apply_train_config(optimizer: torch.optim.Optimizer, train_cfg: Dict[str, Any]) -> None:
    """Set learning rate and weight decay from ``train_cfg`` on a (restored) optimizer."""
    for group in optimizer.param_groups:
        group["lr"] = train_cfg["learning_rate"]
        if "weight_decay" in group:
            group["weight_decay"] = _weight_decay(train_cfg)


def _weight_decay(train_cfg: Dict[str, Any]) -> float:
    # Plain L2 is weight decay; "mba" regularises embeddings in the loss instead.
    return train_cfg["l2_lambda"] if train_cfg["regularization"] == "l2" else 0.0


def make_datasets(table: SampleTable, data_cfg: Dict[str, Any]) -> Dict[str, DINDataset]:
    """train / valid / test datasets; training may group samples that share a history
    (``data.group_histories``), evaluation scores one row per sample."""
    grouped = bool(data_cfg["group_histories"])
    return {s: DINDataset(table, s, list(data_cfg["pooled_features"]), grouped and s == "train")
            for s in ("train", "valid", "test")}


def start_run_record(output_dir: str, config: Dict[str, Any], overwrite: bool) -> None:
    """Once config and data are checked: clear a replaced run (``--overwrite``) and write the
    resolved config.yaml. Nothing in the run folder changes before this."""
    if overwrite:
        clear_run_files(output_dir)
    atomic_write_text(yaml.safe_dump(config, sort_keys=False),
                      os.path.join(output_dir, "config.yaml"))


def make_regularizer(model: DINModel, table: SampleTable, train_rows: np.ndarray,
                     train_cfg: Dict[str, Any]) -> Optional[MiniBatchAwareL2]:
    kind = train_cfg["regularization"]
    if kind not in ("none", "l2", "mba"):
        raise ValueError(f"train.regularization must be none, l2 or mba, got {kind!r}")
    if kind != "mba":
        return None
    weights: Dict[str, torch.Tensor] = {}
    features: Dict[str, List[str]] = {}
    for name, module in model.embedding_collection.embeddings.items():
        weights[name] = module.weight
    for cfg in model.embedding_collection.embedding_configs():
        features[cfg.name] = list(cfg.feature_names)
    if model.embedding_bag_collection is not None:
        for name, module in model.embedding_bag_collection.embedding_bags.items():
            weights[name] = module.weight
        for cfg in model.embedding_bag_collection.embedding_bag_configs():
            features[cfg.name] = list(cfg.feature_names)
    return MiniBatchAwareL2(weights, features, training_frequencies(table, train_rows),
                            train_cfg["l2_lambda"])


@torch.no_grad()
def predict(model: DINModel, loader: DataLoader, progress: bool = False,
            desc: str = "eval") -> Tuple[np.ndarray, np.ndarray, float]:
    """Logits and labels over a loader (in order), and samples per second."""
    model.eval()
    logits: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        logits.append(model(batch.sequence_features, batch.pooled_features,
                            batch.dense_features))
        labels.append(batch.labels)
    elapsed = time.perf_counter() - start
    out = torch.cat(logits).numpy() if logits else np.zeros(0)
    lab = torch.cat(labels).numpy() if labels else np.zeros(0)
    return out, lab, out.size / max(elapsed, 1e-9)


def popularity_scores(table: SampleTable, train_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Baseline: a candidate's score is how often it was a positive in training."""
    positives = train_rows[table.label[train_rows] > 0]
    counts = np.bincount(table.item[positives], minlength=table.vocab["item"]).astype(np.float64)
    return counts[table.item[rows]]


def plot_curves(history: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("Training loss")
    ax_auc.plot(epochs, [h["valid"]["auc"] for h in history], marker="o", label="AUC")
    ax_auc.plot(epochs, [h["valid"]["gauc"] for h in history], marker="s", label="GAUC")
    ax_auc.set_xlabel("epoch")
    ax_auc.set_title("Validation")
    ax_auc.legend()
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _evaluate(model: DINModel, dataset: DINDataset, loader: DataLoader,
              progress: bool, desc: str) -> Dict[str, Any]:
    logits, labels, speed = predict(model, loader, progress, desc)
    out = evaluate_predictions(logits, labels, dataset.user_ids())
    out["samples_per_sec"] = speed
    return out


def finish_results(results: Dict[str, Any], test: Dict[str, Any], table: SampleTable,
                   datasets: Dict[str, DINDataset], train_speeds: List[float],
                   metrics_path: str, note: str = "") -> None:
    """Add the test figures and the popularity baseline, write metrics.json, print a summary."""
    test["train_samples_per_sec"] = float(np.median(train_speeds))
    results["test"] = test
    test_rows = datasets["test"].rows
    pop = popularity_scores(table, datasets["train"].rows, test_rows)
    results["baselines"] = {"popularity": evaluate_predictions(
        torch.as_tensor(pop), table.label[test_rows], table.user_row[test_rows])}
    atomic_write_json(results, metrics_path)
    print(f"[test] best epoch {results['best_epoch']}: auc {test['auc']:.4f} "
          f"gauc {test['gauc']:.4f} (se {test['gauc_se']:.4f}) logloss {test['logloss']:.4f} "
          f"on {test['samples']} samples{note}; popularity gauc "
          f"{results['baselines']['popularity']['gauc']:.4f}")


def early_stop(results: Dict[str, Any], patience: int) -> Optional[str]:
    """Why training should stop now, or None: validation GAUC has not improved for
    ``patience`` epochs (0 disables the rule; ``train.epochs`` is the cap either way).

    It reads only the per-epoch validation record, so it never sees test data, and a resumed
    run decides exactly as an uninterrupted one.
    """
    epochs, best = results["epochs"], results["best_epoch"]
    if patience <= 0 or not epochs or best is None:
        return None
    since = epochs[-1]["epoch"] - best
    if since < patience:
        return None
    return (f"validation GAUC has not improved for {since} epoch(s) (patience {patience}); "
            f"best epoch {best}: {epochs[best - epochs[0]['epoch']]['valid']['gauc']:.4f}")


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks between batches."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(Exception):
    """Raised after a signal once the progress checkpoint is safely written."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; progress saved to "
                         f"{checkpoint}; continue with --resume")
        self.signum = signum


def train(config: Dict[str, Any], output_dir: str, resume: bool = False,
          overwrite: bool = False) -> Dict[str, Any]:
    """Train, pick the best epoch on validation GAUC, evaluate it on test.

    Writes to ``output_dir``: ``config.yaml`` (resolved), ``metrics.json`` (rewritten after
    every epoch), ``curves.png``, ``best.pt`` (model of the best epoch) and ``last.pt`` (all
    progress: model, optimizer, RNG, position in the epoch). ``last.pt`` is written every
    ``train.checkpoint_every`` batches, at each epoch end, and on SIGTERM / Ctrl-C, always
    atomically. ``resume=True`` continues from it (same seed, data and model config; train.*
    may change, e.g. more epochs or a lower learning rate, which are applied) and reaches the
    same results as an uninterrupted run. ``overwrite=True`` deletes a previous run's files in
    ``output_dir``, once the config and data have been checked.

    Returns:
        Dict[str, Any]: the content of metrics.json.
    """
    os.makedirs(output_dir, exist_ok=True)
    last_path = os.path.join(output_dir, "last.pt")
    checkpoint: Optional[Dict[str, Any]] = None
    changes: List[str] = []
    if resume:
        checkpoint = load_checkpoint(last_path)
        changes = check_resumable(checkpoint["config"], config, checkpoint["batch"] > 0)
        print(f"[resume] {last_path}: epoch {checkpoint['epoch']}, batch {checkpoint['batch']}"
              + (f"; applying {', '.join(changes)}" if changes else ""))
    seed = int(config["seed"])
    data_cfg, train_cfg = config["data"], config["train"]
    progress = bool(train_cfg["progress"])
    torch.manual_seed(seed)
    np.random.seed(seed)

    table = build_table(data_cfg, seed)
    datasets = make_datasets(table, data_cfg)
    for split, ds in datasets.items():
        if len(ds) == 0:
            raise ValueError(f"the {split} split is empty; check data.valid_per_user / "
                             "data.test_per_user")
    workers = int(data_cfg["num_workers"])
    train_loader = make_loader(datasets["train"], train_cfg["batch_size"], True, seed, workers)
    eval_loaders = {s: make_loader(datasets[s], train_cfg["eval_batch_size"], False, seed, workers)
                    for s in ("valid", "test")}

    model = build_model(table.vocab, config)
    train_model = DINTrain(model, bool(data_cfg["group_histories"]))
    optimizer = make_optimizer(model.parameters(), train_cfg)
    regularizer = make_regularizer(model, table, datasets["train"].rows, train_cfg)
    start_run_record(output_dir, config, overwrite)

    summary = table.summary()
    results: Dict[str, Any] = {"data": {"summary": summary, "meta": table.meta},
                               "epochs": [], "best_epoch": None}
    meta = table.meta
    print(f"[data] {meta.get('dataset', data_cfg['dataset'])} protocol={meta.get('protocol')}: "
          + ", ".join(f"{k} {v['samples']} samples / {v['users']} users" for k, v in summary.items()))
    if meta.get("behaviours_cut"):
        print(f"[data] max_history={meta['max_history']}: {meta['histories_truncated']} histories "
              f"truncated, {meta['behaviours_cut']} oldest behaviours cut")
    if meta.get("skipped_lines"):
        print(f"[data] skipped malformed lines: {meta['skipped_lines']}")
    best_gauc = -float("inf")
    train_speeds: List[float] = []
    start_epoch, start_batch = 0, 0
    totals = {"loss": 0.0, "samples": 0, "elapsed": 0.0}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        apply_train_config(optimizer, train_cfg)  # a changed learning rate takes effect
        torch.set_rng_state(checkpoint["rng"])
        results, best_gauc = checkpoint["results"], checkpoint["best_gauc"]
        train_speeds, totals = checkpoint["train_speeds"], checkpoint["totals"]
        start_epoch, start_batch = checkpoint["epoch"], checkpoint["batch"]
    metrics_path = os.path.join(output_dir, "metrics.json")
    checkpoint_every = int(train_cfg["checkpoint_every"])

    def save_progress(epoch: int, batch: int) -> None:
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "rng": torch.get_rng_state(), "epoch": epoch, "batch": batch,
                     "totals": dict(totals), "results": results, "best_gauc": best_gauc,
                     "train_speeds": list(train_speeds), "config": config}, last_path)

    patience = int(train_cfg["patience"])
    with _StopRequest() as stop:
        for epoch in range(start_epoch, int(train_cfg["epochs"])):
            reason = early_stop(results, patience)
            if reason is not None:
                print(f"[early stop] {reason}")
                break
            model.train()
            skip = start_batch if epoch == start_epoch else 0
            if skip == 0:
                totals = {"loss": 0.0, "samples": 0, "elapsed": 0.0}
            train_loader.sampler.set_epoch(epoch, skip_batches=skip)
            bar = tqdm(train_loader, desc=f"epoch {epoch}", disable=not progress,
                       mininterval=1.0, unit="batch", initial=skip,
                       total=skip + len(train_loader.sampler))
            start = time.perf_counter() - totals["elapsed"]
            for step, batch in enumerate(bar, start=skip + 1):
                loss, _ = train_model(batch)
                if regularizer is not None:
                    loss = loss + regularizer([batch.sequence_features, batch.pooled_features])
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite training loss ({loss.item()}) at epoch {epoch}, batch "
                        f"{step}; stopped before the update. The last good progress is "
                        f"{last_path} (resume with --resume after lowering the learning rate)")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                n = batch.batch_size
                totals["loss"] += loss.item() * n
                totals["samples"] += n
                totals["elapsed"] = time.perf_counter() - start
                bar.set_postfix(loss=f"{totals['loss'] / totals['samples']:.4f}",
                                samples_per_s=f"{totals['samples'] / totals['elapsed']:.0f}",
                                refresh=False)
                if stop.signal is not None or (checkpoint_every and step % checkpoint_every == 0):
                    save_progress(epoch, step)
                    if stop.signal is not None:
                        bar.close()
                        raise TrainingInterrupted(stop.signal, last_path)
            bar.close()
            speed = totals["samples"] / max(totals["elapsed"], 1e-9)
            train_speeds.append(speed)
            valid = _evaluate(model, datasets["valid"], eval_loaders["valid"], progress, "valid")
            record = {"epoch": epoch, "train_loss": totals["loss"] / max(totals["samples"], 1),
                      "train_samples_per_sec": speed, "valid": valid}
            results["epochs"].append(record)
            print(f"[epoch {epoch}] loss {record['train_loss']:.4f}  valid auc {valid['auc']:.4f} "
                  f"gauc {valid['gauc']:.4f} logloss {valid['logloss']:.4f}  {speed:.0f} samples/s")
            if valid["gauc"] > best_gauc:
                best_gauc = valid["gauc"]
                results["best_epoch"] = epoch
                atomic_save({"model": model.state_dict(), "epoch": epoch, "config": config,
                             "vocab": table.vocab},
                            os.path.join(output_dir, "best.pt"))
            save_progress(epoch + 1, 0)
            atomic_write_json(results, metrics_path)
            plot_curves(results["epochs"], os.path.join(output_dir, "curves.png"))
            if stop.signal is not None:
                raise TrainingInterrupted(stop.signal, last_path)

    best = load_checkpoint(os.path.join(output_dir, "best.pt"))
    model.load_state_dict(best["model"])
    test = _evaluate(model, datasets["test"], eval_loaders["test"], progress, "test")
    finish_results(results, test, table, datasets, train_speeds, metrics_path)
    return results
