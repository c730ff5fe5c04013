"""The run record: what a training run has measured, and everything it shows and writes.

:class:`RunRecord` holds the per-epoch records, the best epoch by the selection metric
(``train.select_metric``), the training speeds and, at the end, the test figures and the
popularity baseline. It prints the epoch line, decides early stopping, and writes
``metrics.json`` and ``curves.png`` (both atomically). What a validation metric shows is
declared once, in :data:`SHOWN`: a new metric of ``evaluate_predictions`` reaches
metrics.json by itself, and the epoch line, the plot and the selection by a line there.
"""

import io
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from torchrec_din.io import atomic_write, atomic_write_json


@dataclass(frozen=True)
class Shown:
    """How a validation metric is shown.

    Attributes:
        key: its key in ``evaluate_predictions``' output.
        label: its name in messages and on the plot.
        higher_is_better: the direction the selection and early stopping follow.
        plot: drawn in curves.png's validation panel.
    """

    key: str
    label: str
    higher_is_better: bool
    plot: bool


SHOWN = (
    Shown("auc", "AUC", True, True),
    Shown("gauc", "GAUC", True, True),
    Shown("logloss", "logloss", False, False),
)
SELECTABLE = {m.key: m for m in SHOWN}


def _better(metric: Shown, value: float, best: Optional[float]) -> bool:
    if not np.isfinite(value):  # e.g. GAUC of a split without a user of both labels
        return False
    if best is None:
        return True
    return value > best if metric.higher_is_better else value < best


def early_stop(results: Dict[str, Any], patience: int, metric: str = "gauc") -> Optional[str]:
    """Why training should stop now, or None: the selection ``metric`` on validation has not
    improved for ``patience`` epochs (0 disables the rule; ``train.epochs`` is the cap either
    way).

    It reads only the per-epoch validation record, so it never sees test data, and a resumed
    run decides exactly as an uninterrupted one.
    """
    epochs, best = results["epochs"], results["best_epoch"]
    if patience <= 0 or not epochs or best is None:
        return None
    since = epochs[-1]["epoch"] - best
    if since < patience:
        return None
    shown = SELECTABLE[metric]
    value = epochs[best - epochs[0]["epoch"]]["valid"][metric]
    return (f"validation {shown.label} has not improved for {since} epoch(s) (patience "
            f"{patience}); best epoch {best}: {value:.4f}")


class RunRecord:
    """Epochs, best epoch, speeds and final figures of one run.

    Args:
        select_metric (str): the validation metric that picks the best epoch (a key of
            :data:`SHOWN`).
        summary, meta (Dict[str, Any]): the data source's, kept in metrics.json.
        world (int): ranks the run trains on.

    Example::

        record = RunRecord("gauc", source.summary(), source.meta, world=1)
        if record.add_epoch(0, 0.52, 9000.0, valid):   # a new best epoch
            save_best()
        print(record.epoch_line(0)); record.write(output_dir)
    """

    def __init__(self, select_metric: str, summary: Dict[str, Any], meta: Dict[str, Any],
                 world: int) -> None:
        if select_metric not in SELECTABLE:
            raise ValueError(f"train.select_metric must be one of {sorted(SELECTABLE)}, got "
                             f"{select_metric!r}")
        self.metric = SELECTABLE[select_metric]
        self.results: Dict[str, Any] = {"data": {"summary": summary, "meta": meta},
                                        "epochs": [], "best_epoch": None, "world_size": world,
                                        "select_metric": select_metric}
        self.best: Optional[float] = None
        self.train_speeds: List[float] = []

    # Saved with every progress checkpoint, so a resumed run continues the same record.
    def state(self) -> Dict[str, Any]:
        return {"results": self.results, "best": self.best,
                "train_speeds": list(self.train_speeds)}

    def restore(self, saved: Dict[str, Any], world: int) -> None:
        """From :meth:`state` (or a checkpoint written before the record had its own key)."""
        state = saved.get("record") or {"results": saved["results"],
                                        "best": saved.get("best_gauc"),
                                        "train_speeds": saved["train_speeds"]}
        self.results, self.train_speeds = state["results"], list(state["train_speeds"])
        self.best = state["best"]
        if self.best is not None and not np.isfinite(self.best):
            self.best = None  # the old -inf start value
        self.results["world_size"] = world
        self.results.setdefault("select_metric", self.metric.key)

    def stop_reason(self, patience: int) -> Optional[str]:
        return early_stop(self.results, patience, self.metric.key)

    def add_epoch(self, epoch: int, train_loss: float, speed: float,
                  valid: Dict[str, Any]) -> bool:
        """Record an epoch; True when it is the best so far (by the selection metric)."""
        self.train_speeds.append(speed)
        self.results["epochs"].append({"epoch": epoch, "train_loss": train_loss,
                                       "train_samples_per_sec": speed, "valid": valid})
        value = float(valid[self.metric.key])
        if not _better(self.metric, value, self.best):
            return False
        self.best, self.results["best_epoch"] = value, epoch
        return True

    def epoch_line(self, epoch: int) -> str:
        record = next(e for e in self.results["epochs"] if e["epoch"] == epoch)
        world = self.results["world_size"]
        ranks = f" ({world} ranks)" if world > 1 else ""
        shown = " ".join(f"{m.key} {record['valid'][m.key]:.4f}" for m in SHOWN)
        return (f"[epoch {epoch}] loss {record['train_loss']:.4f}  valid {shown}  "
                f"{record['train_samples_per_sec']:.0f} samples/s{ranks}")

    def write(self, output_dir: str, plot: bool = True) -> None:
        """metrics.json and (``plot``) curves.png, each written atomically."""
        atomic_write_json(self.results, os.path.join(output_dir, "metrics.json"))
        if plot:
            plot_curves(self.results["epochs"], os.path.join(output_dir, "curves.png"))

    def finish(self, test: Dict[str, Any], popularity: Dict[str, Any], output_dir: str,
               note: str = "") -> str:
        """Add the test figures and the popularity baseline, write metrics.json; returns
        the summary line."""
        test["train_samples_per_sec"] = (float(np.median(self.train_speeds))
                                         if self.train_speeds else 0.0)
        self.results["test"] = test
        self.results["baselines"] = {"popularity": popularity}
        self.write(output_dir, plot=False)
        oracle = ""
        if "best_possible" in test:
            best, share = test["best_possible"], test["lift_share"]
            oracle = (f"; best possible auc {best['auc']:.4f} gauc {best['gauc']:.4f}: "
                      f"{share['auc']:.0%} / {share['gauc']:.0%} of the possible lift")
        return (f"[test] best epoch {self.results['best_epoch']}: auc {test['auc']:.4f} "
                f"gauc {test['gauc']:.4f} (se {test['gauc_se']:.4f}) logloss "
                f"{test['logloss']:.4f} on {test['samples']} samples{note}; popularity gauc "
                f"{popularity['gauc']:.4f}{oracle}")


def plot_curves(history: List[Dict[str, Any]], path: str) -> None:
    """Training loss and the plotted validation metrics per epoch, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("Training loss")
    for metric, marker in zip([m for m in SHOWN if m.plot], "osD^v"):
        ax_valid.plot(epochs, [h["valid"][metric.key] for h in history], marker=marker,
                      label=metric.label)
    ax_valid.set_xlabel("epoch")
    ax_valid.set_title("Validation")
    ax_valid.legend()
    for ax in (ax_loss, ax_valid):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
