"""The training engine: one epoch loop for one process and for torchrun.

The loop, evaluation, best-epoch choice, early stopping, metrics.json, curves, progress
lines, SIGTERM / Ctrl-C handling and ``--resume`` live here, once. What differs between a
plain process and sharded training sits behind :class:`Backend`:
``train.loop.LocalBackend`` (a plain optimizer, ``torch.save`` checkpoints) and
``train.distributed.ShardedBackend`` (planner + DistributedModelParallel +
TrainPipelineSparseDist, torch.distributed.checkpoint).
"""

import math
import os
import signal
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from torchrec_din.allocator import keep_freed_memory
from torchrec_din.data.loader import _identity, DINDataset, make_loader
from torchrec_din.data.samples import SampleTable
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.metrics import evaluate_predictions, oracle_comparison
from torchrec_din.train.builder import build_table
from torchrec_din.train.checkpoint import atomic_write_json, atomic_write_text, check_resumable
from torchrec_din.train.rundir import drop_replaced, restore_run_files, set_aside_run_files

T = TypeVar("T")


class Backend:
    """What one process and sharded training do differently; the engine calls these.

    A backend is a context manager (``__enter__`` joins the process group, ``__exit__``
    leaves it). Collective methods (``any``, ``sum``, ``share``, ``predict``, saving and
    loading) are called by every rank in the same order.
    """

    rank: int = 0
    world: int = 1
    progress_path: str = ""  # where save_progress writes, for messages

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the others (rank 0 fills caches)."""
        return fn()

    def read_progress(self, output_dir: str) -> Dict[str, Any]:
        """The saved progress record (``config``, ``epoch``, ``batch``, ...) of a run."""
        raise NotImplementedError

    def check_resume(self, saved: Dict[str, Any], config: Dict[str, Any]) -> None:
        """Backend-specific reasons the saved progress cannot continue (beyond the config)."""

    def setup(self, config: Dict[str, Any], table: SampleTable,
              datasets: Dict[str, DINDataset], output_dir: str) -> None:
        """Build the model and optimizer; raise ValueError for unsupported settings."""
        raise NotImplementedError

    def restore_progress(self, saved: Dict[str, Any], config: Dict[str, Any]) -> None:
        """Load model, optimizer and RNG state from what read_progress returned."""
        raise NotImplementedError

    def train_batches(self, loader: Any) -> Iterator[Tuple[torch.Tensor, int]]:
        """Train on ``loader``'s batches; yields (detached mean loss, samples) per step."""
        raise NotImplementedError

    def predict(self, dataset: DINDataset, batch_size: int, progress: bool,
                desc: str) -> Tuple[Optional[np.ndarray], float]:
        """Logits of the whole split in order (on rank 0; None elsewhere) and seconds."""
        raise NotImplementedError

    def save_progress(self, record: Dict[str, Any]) -> None:
        """Atomically save model, optimizer, RNG and ``record`` (gathered per rank)."""
        raise NotImplementedError

    def save_best(self, epoch: int, config: Dict[str, Any], vocab: Dict[str, int],
                  serving: Dict[str, Any]) -> None:
        """Save the best epoch's model with what serving needs: config, vocab and
        ``serving`` (``pooled_multi_hot``: the pooled features given as id lists)."""
        raise NotImplementedError

    def load_best(self) -> None:
        raise NotImplementedError

    def sync_statistics(self) -> None:
        """Make the model's running statistics (Dice) the same on every rank; the engine
        calls it at every loss read (backends also before evaluation and saving)."""

    def any(self, flags: List[bool]) -> List[bool]:
        """Element-wise OR of ``flags`` over ranks."""
        return list(flags)

    def sum(self, values: List[float]) -> List[float]:
        """Element-wise sum of ``values`` over ranks."""
        return list(values)

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, indexed by rank."""
        return [obj]

    def share(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        return obj


def grouped_training(data_cfg: Dict[str, Any]) -> bool:
    """Whether training runs on shared histories (``data.group_histories``; ``auto``: for
    the built-in protocols that pair every positive with a negative on the same history)."""
    value = data_cfg["group_histories"]
    if value == "auto":
        return (data_cfg["dataset"] == "amazon-electronics"
                or (data_cfg["dataset"] == "movielens-100k"
                    and data_cfg["protocol"] == "next_item"))
    return bool(value)


def make_datasets(table: SampleTable, config: Dict[str, Any]) -> Dict[str, DINDataset]:
    """train / valid / test datasets of the config's feature schema; training may group
    samples that share a history (``data.group_histories``), evaluation scores one row per
    sample."""
    grouped = grouped_training(config["data"])
    schema = FeatureSchema.from_config(config["features"])
    return {s: DINDataset(table, s, schema, grouped and s == "train")
            for s in ("train", "valid", "test")}


def load_data(config: Dict[str, Any], backend: "Backend") -> Tuple[Any, Dict[str, Any]]:
    """The data source (a built-in SampleTable or a ParquetSource) and the train / valid /
    test datasets of this rank."""
    data_cfg, train_cfg = config["data"], config["train"]
    seed = int(config["seed"])
    if data_cfg["dataset"] != "parquet":
        table = backend.main_first(lambda: build_table(data_cfg, seed))
        return table, make_datasets(table, config)
    if data_cfg["group_histories"] is True:
        raise ValueError("data.group_histories groups a built-in data set's samples by user "
                         "and history; Parquet input has one sample per row")
    source = parquet_source(config)
    sizes = {"train": int(train_cfg["batch_size"]), "valid": int(train_cfg["eval_batch_size"]),
             "test": int(train_cfg["eval_batch_size"])}
    return source, source.datasets(sizes, seed, backend.rank, backend.world)


def parquet_source(config: Dict[str, Any]) -> Any:
    """The config's ParquetSource: its files (metadata only) and table sizes, which Parquet
    input takes from ``tables.<name>.num_embeddings``."""
    from torchrec_din.data.parquet import ParquetSource

    schema = FeatureSchema.from_config(config["features"])
    vocab: Dict[str, int] = {}
    for t in schema.table_features():
        n = (config.get("tables", {}).get(t) or {}).get("num_embeddings")
        if not n:
            raise ValueError(f"Parquet input: set tables.{t}.num_embeddings (the number of "
                             f"ids of table {t!r}; ids must be in [0, num_embeddings))")
        vocab[t] = int(n)
    return ParquetSource(config["data"], schema, vocab)


def make_data_loader(dataset: Any, batch_size: int, shuffle: bool, seed: int, workers: int,
                     rank: int = 0, world: int = 1) -> DataLoader:
    """A DataLoader of DINBatch over an in-memory DINDataset (batched by an epoch sampler)
    or a streaming ParquetDataset (which batches and splits itself)."""
    if isinstance(dataset, DINDataset):
        return make_loader(dataset, batch_size, shuffle, seed, workers, rank, world)
    # Not persistent: each epoch's workers get the dataset as set_epoch left it. Its own
    # generator: otherwise starting workers draws from the global RNG, and a resumed run's
    # dropout masks would differ from an uninterrupted run's.
    return DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
                      generator=torch.Generator().manual_seed(seed))


def set_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Select the epoch's order on the loader's sampler or streaming dataset."""
    target = loader.dataset if hasattr(loader.dataset, "set_epoch") else loader.sampler
    target.set_epoch(epoch, skip_batches=skip_batches)


class RunFolder:
    """The run folder's side of a new run: nothing in it changes before :meth:`start` (config
    and data checked); until the first progress checkpoint (:meth:`commit`) a failure puts
    it back as it was (:meth:`rollback`), ``--overwrite``'s replaced run included.

    Args:
        output_dir (str): the run folder.
        active (bool): this process owns the folder (rank 0 of a fresh, not resumed, run).
    """

    def __init__(self, output_dir: str, active: bool) -> None:
        self.output_dir, self.active = output_dir, active
        self.started = self.committed = False

    def start(self, config: Dict[str, Any], overwrite: bool) -> None:
        """Set a replaced run aside (``--overwrite``) and write the resolved config.yaml."""
        if not self.active:
            return
        if overwrite:
            set_aside_run_files(self.output_dir)
        self.started = True
        atomic_write_text(yaml.safe_dump(config, sort_keys=False),
                          os.path.join(self.output_dir, "config.yaml"))

    def commit(self) -> None:
        """A progress checkpoint exists: the run is resumable, the replaced one goes."""
        if self.started and not self.committed:
            drop_replaced(self.output_dir)
            self.committed = True

    def rollback(self) -> None:
        if self.started and not self.committed:
            restore_run_files(self.output_dir)
            self.started = False


def popularity_scores(table: SampleTable, train_rows: np.ndarray, rows: np.ndarray,
                      feature: str) -> np.ndarray:
    """Baseline: a candidate's score is how often its ``feature`` id (the schema's first
    candidate feature) was a positive in training."""
    ids = table.candidate_column(feature)
    positives = train_rows[table.label[train_rows] > 0]
    counts = np.bincount(ids[positives], minlength=int(ids.max(initial=0)) + 1)
    return counts.astype(np.float64)[ids[rows]]


def plot_curves(history: List[Dict[str, Any]], path: str) -> None:
    """Training loss and validation AUC / GAUC per epoch, written atomically to ``path``."""
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


def evaluate_split(backend: Backend, dataset: DINDataset, batch_size: int, progress: bool,
                   desc: str) -> Optional[Dict[str, Any]]:
    """AUC / GAUC / logloss of the split (on rank 0; None elsewhere)."""
    logits, elapsed = backend.predict(dataset, batch_size, progress, desc)
    if logits is None:
        return None
    out = evaluate_predictions(torch.as_tensor(logits), dataset.labels(), dataset.user_ids())
    out["samples_per_sec"] = len(dataset) / max(elapsed, 1e-9)
    truth = dataset.true_probabilities()
    if truth is not None:  # planted data: how far from the best any model can do
        out.update(oracle_comparison(out, truth, dataset.labels(), dataset.user_ids()))
    return out


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


def _zero_totals() -> Dict[str, float]:
    return {"loss": 0.0, "samples": 0, "elapsed": 0.0}


def run_training(backend: Backend, config: Dict[str, Any], output_dir: str,
                 resume: bool = False, overwrite: bool = False) -> Optional[Dict[str, Any]]:
    """Train, pick the best epoch on validation GAUC, evaluate it on test.

    Writes to ``output_dir`` (rank 0): ``config.yaml`` (resolved), ``metrics.json``
    (rewritten after every epoch), ``curves.png``, the best epoch's model and the progress
    checkpoint (the backend's format). Progress is saved every ``train.checkpoint_every``
    batches, at each epoch end and on SIGTERM / Ctrl-C (then :class:`TrainingInterrupted`
    is raised), always atomically. ``resume=True`` continues from it (same seed, data and
    model config; train.* may change, e.g. more epochs or a lower learning rate) and reaches
    the same results as an uninterrupted run. ``overwrite=True`` replaces a previous run's
    files in ``output_dir`` (see :class:`RunFolder`): they are kept aside until the new run
    writes its first progress checkpoint, and a new run that fails before that leaves the
    folder as it found it.

    Returns:
        Optional[Dict[str, Any]]: the content of metrics.json on rank 0, None elsewhere.
    """
    data_cfg, train_cfg = config["data"], config["train"]
    seed = int(config["seed"])
    main = backend.main
    if train_cfg["keep_freed_memory"]:
        keep_freed_memory()
    saved: Optional[Dict[str, Any]] = None
    if resume:
        saved = backend.read_progress(output_dir)
        changes = check_resumable(saved["config"], config, saved["batch"] > 0)
        backend.check_resume(saved, config)
        if main:
            print(f"[resume] {backend.progress_path}: {saved['world_size']} rank(s) -> "
                  f"{backend.world}, continuing at epoch {saved['epoch']}, batch "
                  f"{saved['batch']}" + (f"; applying {', '.join(changes)}" if changes else ""))
    torch.manual_seed(seed)
    np.random.seed(seed)
    if main:
        os.makedirs(output_dir, exist_ok=True)

    table, datasets = load_data(config, backend)
    for split, ds in datasets.items():
        if len(ds) == 0:
            raise ValueError(f"the {split} split is empty; check data.valid_per_user / "
                             "data.test_per_user")
    loader = make_data_loader(datasets["train"], train_cfg["batch_size"], True, seed,
                              int(data_cfg["num_workers"]), backend.rank, backend.world)
    backend.setup(config, table, datasets, output_dir)
    folder = RunFolder(output_dir, main and not resume)
    try:
        folder.start(config, overwrite)
        return _train_epochs(backend, config, output_dir, saved, table, datasets, loader,
                             folder)
    except TrainingInterrupted:
        raise  # progress was saved: the run is resumable
    except BaseException:
        folder.rollback()
        raise


def _train_epochs(backend: Backend, config: Dict[str, Any], output_dir: str,
                  saved: Optional[Dict[str, Any]], table: Any, datasets: Dict[str, Any],
                  loader: DataLoader, folder: RunFolder) -> Optional[Dict[str, Any]]:
    """The epoch loop of :func:`run_training`, once the run folder is started."""
    data_cfg, train_cfg = config["data"], config["train"]
    main = backend.main
    if main:
        _print_data(table, data_cfg)

    results: Dict[str, Any] = {"data": {"summary": table.summary(), "meta": table.meta},
                               "epochs": [], "best_epoch": None, "world_size": backend.world}
    best_gauc = -float("inf")
    train_speeds: List[float] = []
    start_epoch, start_batch = 0, 0
    totals = _zero_totals()
    if saved is not None:
        backend.restore_progress(saved, config)
        results, best_gauc = saved["results"], saved["best_gauc"]
        results["world_size"] = backend.world
        train_speeds = saved["train_speeds"]
        start_epoch, start_batch = saved["epoch"], saved["batch"]
        if start_batch:  # check_resume refused a changed world size mid-epoch
            totals = saved["totals"][backend.rank]
    progress = bool(train_cfg["progress"]) and main
    checkpoint_every = int(train_cfg["checkpoint_every"])
    sync_every = int(train_cfg["sync_every"])
    eval_batch = int(train_cfg["eval_batch_size"])
    patience = int(train_cfg["patience"])
    metrics_path = os.path.join(output_dir, "metrics.json")

    def save_progress(epoch: int, batch: int) -> None:
        backend.save_progress({
            "epoch": epoch, "batch": batch, "totals": backend.gather(dict(totals)),
            "results": results, "best_gauc": best_gauc, "train_speeds": list(train_speeds),
            "config": config, "world_size": backend.world})
        folder.commit()

    with _StopRequest() as stop:
        for epoch in range(start_epoch, int(train_cfg["epochs"])):
            reason = early_stop(results, patience)  # results are the same on every rank
            if reason is not None:
                if main:
                    print(f"[early stop] {reason}")
                break
            skip = start_batch if epoch == start_epoch else 0
            if skip == 0:
                totals = _zero_totals()
            set_epoch(loader, epoch, skip)
            bar = tqdm(total=skip + len(loader), initial=skip, desc=f"epoch {epoch}",
                       disable=not progress, mininterval=1.0, unit="batch")
            start = time.perf_counter() - totals["elapsed"]
            step = skip
            # Losses stay on the device between syncs: the host reads them (and the ranks
            # agree on stopping) every train.sync_every steps, at checkpoints and at the end.
            pending: Dict[str, Any] = {"sum": None, "n": 0, "first": step + 1}

            def sync(step: int) -> bool:
                """Read the pending losses; raise on a non-finite one; True: stop now."""
                backend.sync_statistics()
                value = float(pending["sum"]) if pending["sum"] is not None else 0.0
                stopping, bad = backend.any([stop.signal is not None, not math.isfinite(value)])
                first = pending["first"]
                if bad:
                    bar.close()
                    where = f"batch {step}" if first == step else f"batches {first}-{step}"
                    raise FloatingPointError(
                        f"non-finite training loss at epoch {epoch}, {where}"
                        f"{f' (on some rank of {backend.world})' if backend.world > 1 else ''}; "
                        f"nothing was saved after it. The last good progress is "
                        f"{backend.progress_path} (resume with --resume after lowering the "
                        f"learning rate; train.sync_every=1 names the exact batch)")
                totals["loss"] += value
                totals["samples"] += pending["n"]
                totals["elapsed"] = time.perf_counter() - start
                bar.update(step - first + 1)
                bar.set_postfix(loss=f"{totals['loss'] / max(totals['samples'], 1):.4f}",
                                samples_per_s=f"{totals['samples'] / totals['elapsed']:.0f}",
                                refresh=False)
                pending.update(sum=None, n=0, first=step + 1)
                return stopping

            for loss, n in backend.train_batches(loader):
                step += 1
                weighted = loss.detach() * n
                pending["sum"] = weighted if pending["sum"] is None else pending["sum"] + weighted
                pending["n"] += n
                at_checkpoint = bool(checkpoint_every) and step % checkpoint_every == 0
                if step % sync_every and not at_checkpoint:
                    continue
                stopping = sync(step)
                if stopping or at_checkpoint:
                    save_progress(epoch, step)
                    if stopping:
                        bar.close()
                        raise TrainingInterrupted(stop.signal or signal.SIGTERM,
                                                  backend.progress_path)
            if pending["first"] <= step:
                sync(step)  # the epoch's last batches (a stop request waits for the epoch end)
            bar.close()
            loss_sum, samples = backend.sum([totals["loss"], float(totals["samples"])])
            elapsed = max(backend.gather(totals["elapsed"]))
            speed = samples / max(elapsed, 1e-9)
            train_speeds.append(speed)
            valid = backend.share(
                evaluate_split(backend, datasets["valid"], eval_batch, progress, "valid"))
            record = {"epoch": epoch, "train_loss": loss_sum / max(samples, 1.0),
                      "train_samples_per_sec": speed, "valid": valid}
            results["epochs"].append(record)
            if main:
                ranks = f" ({backend.world} ranks)" if backend.world > 1 else ""
                print(f"[epoch {epoch}] loss {record['train_loss']:.4f}  valid auc "
                      f"{valid['auc']:.4f} gauc {valid['gauc']:.4f} logloss "
                      f"{valid['logloss']:.4f}  {speed:.0f} samples/s{ranks}")
            if valid["gauc"] > best_gauc:
                best_gauc = valid["gauc"]
                results["best_epoch"] = epoch
                backend.save_best(epoch, config, table.vocab,
                                  {"pooled_multi_hot": list(table.meta.get("multi_hot", []))})
            save_progress(epoch + 1, 0)
            if main:
                atomic_write_json(results, metrics_path)
                plot_curves(results["epochs"], os.path.join(output_dir, "curves.png"))
            if backend.any([stop.signal is not None])[0]:
                raise TrainingInterrupted(stop.signal or signal.SIGTERM, backend.progress_path)

    backend.load_best()
    test = evaluate_split(backend, datasets["test"], eval_batch, progress, "test")
    if not main:
        return None
    note = f", {backend.world} ranks" if backend.world > 1 else ""
    _finish_results(results, test, table, datasets, train_speeds, metrics_path, note)
    return results


def _print_data(table: SampleTable, data_cfg: Dict[str, Any]) -> None:
    meta, summary = table.meta, table.summary()
    print(f"[data] {meta.get('dataset', data_cfg['dataset'])} protocol={meta.get('protocol')}: "
          + ", ".join(f"{k} {v['samples']} samples"
                      + (f" / {v['users']} users" if "users" in v else "")
                      for k, v in summary.items()))
    if meta.get("behaviours_cut"):
        print(f"[data] max_history={meta['max_history']}: {meta['histories_truncated']} histories "
              f"truncated, {meta['behaviours_cut']} oldest behaviours cut")
    if meta.get("skipped_lines"):
        print(f"[data] skipped malformed lines: {meta['skipped_lines']}")


def _finish_results(results: Dict[str, Any], test: Dict[str, Any], table: Any,
                    datasets: Dict[str, DINDataset], train_speeds: List[float],
                    metrics_path: str, note: str) -> None:
    """Add the test figures and the popularity baseline, write metrics.json, print a summary."""
    test["train_samples_per_sec"] = float(np.median(train_speeds)) if train_speeds else 0.0
    results["test"] = test
    test_ds = datasets["test"]
    if isinstance(table, SampleTable):
        pop = popularity_scores(table, datasets["train"].rows, test_ds.rows,
                                test_ds.schema.popularity_feature())
    else:
        pop = table.popularity_scores()
    results["baselines"] = {"popularity": evaluate_predictions(
        torch.as_tensor(pop), test_ds.labels(), test_ds.user_ids())}
    atomic_write_json(results, metrics_path)
    oracle = ""
    if "best_possible" in test:
        best, share = test["best_possible"], test["lift_share"]
        oracle = (f"; best possible auc {best['auc']:.4f} gauc {best['gauc']:.4f}: "
                  f"{share['auc']:.0%} / {share['gauc']:.0%} of the possible lift")
    print(f"[test] best epoch {results['best_epoch']}: auc {test['auc']:.4f} "
          f"gauc {test['gauc']:.4f} (se {test['gauc_se']:.4f}) logloss {test['logloss']:.4f} "
          f"on {test['samples']} samples{note}; popularity gauc "
          f"{results['baselines']['popularity']['gauc']:.4f}{oracle}")
