"""The training engine: one epoch loop for one process and for torchrun.

The loop, evaluation, early stopping, SIGTERM / Ctrl-C handling and ``--resume`` live here,
once; what the run measured and shows (epochs, best epoch, the epoch line, metrics.json,
curves.png) is the :class:`~torchrec_din.train.record.RunRecord`; the data is a
:class:`~torchrec_din.data.source.DataSource` opened by the registry. Model, step,
collectives and checkpoints sit behind :class:`Backend`; ``train.sharded.ShardedBackend``
(planner + DistributedModelParallel + TrainPipelineSparseDist, torch.distributed.checkpoint)
implements it for one process (a 1-rank world) and for torchrun alike.
"""

import math
import os
import signal
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import numpy as np
import torch
import yaml
from tqdm import tqdm

from torchrec_din.allocator import keep_freed_memory
from torchrec_din.distributed import plain_name
from torchrec_din.data.registry import open_source
from torchrec_din.data.source import DataSource, EpochLoader, popularity_scores, SplitData
from torchrec_din.metrics import evaluate_predictions, oracle_comparison
from torchrec_din.io import atomic_write_text
from torchrec_din.train.checkpoint import check_resumable
from torchrec_din.train.record import RunRecord
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

    def setup(self, config: Dict[str, Any], source: DataSource,
              splits: Dict[str, SplitData], output_dir: str) -> None:
        """Build the model and optimizer for ``source`` (this rank's ``splits``); raise
        ValueError for unsupported settings."""
        raise NotImplementedError

    def restore_progress(self, saved: Dict[str, Any], config: Dict[str, Any]) -> None:
        """Load model, optimizer and RNG state from what read_progress returned."""
        raise NotImplementedError

    def train_batches(self, loader: EpochLoader) -> Iterator[Tuple[torch.Tensor, int]]:
        """Train on ``loader``'s batches; yields (detached mean loss, samples) per step."""
        raise NotImplementedError

    def predict(self, split: SplitData, progress: bool,
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

    def progress_saved(self) -> bool:
        """Whether ``progress_path`` holds saved progress to resume from."""
        return os.path.isfile(self.progress_path)

    def non_finite_report(self) -> str:
        """What went non-finite first in the last training step (see
        :func:`describe_non_finite`); called on a rank whose loss was non-finite."""
        return ""

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


def evaluate_split(backend: Backend, split: SplitData, progress: bool,
                   desc: str) -> Optional[Dict[str, Any]]:
    """AUC / GAUC / logloss of the split (on rank 0; None elsewhere)."""
    logits, elapsed = backend.predict(split, progress, desc)
    if logits is None:
        return None
    labels, groups = split.labels(), split.user_ids()
    out = evaluate_predictions(torch.as_tensor(logits), labels, groups)
    out["samples_per_sec"] = len(labels) / max(elapsed, 1e-9)  # the whole split's samples
    truth = split.true_probabilities()
    if truth is not None:  # planted data: how far from the best any model can do
        out.update(oracle_comparison(out, truth, labels, groups))
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


class _EpochTotals:
    """The epoch's training loss sum, sample count and seconds so far, as the host has read
    them. A mid-epoch checkpoint keeps them (:meth:`state`), so a resumed epoch reports the
    same mean loss and speed as an uninterrupted one."""

    def __init__(self, loss: float = 0.0, samples: int = 0, elapsed: float = 0.0) -> None:
        self.loss, self.samples, self.elapsed = float(loss), int(samples), float(elapsed)

    @classmethod
    def from_state(cls, state: Dict[str, float]) -> "_EpochTotals":
        return cls(state["loss"], state["samples"], state["elapsed"])

    def state(self) -> Dict[str, float]:
        return {"loss": self.loss, "samples": self.samples, "elapsed": self.elapsed}

    def postfix(self) -> Dict[str, str]:
        """The progress bar's running loss and speed."""
        return {"loss": f"{self.loss / max(self.samples, 1):.4f}",
                "samples_per_s": f"{self.samples / max(self.elapsed, 1e-9):.0f}"}


class _LossWindow:
    """The weighted losses of the batches since the host last read them, summed on the
    device so that a training step does no host sync (read every train.sync_every steps)."""

    def __init__(self, first: int) -> None:
        self.first = first  # the window's first batch, 1-based within the epoch
        self.sum: Optional[torch.Tensor] = None
        self.samples = 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        weighted = loss.detach() * n
        self.sum = weighted if self.sum is None else self.sum + weighted
        self.samples += n

    def open(self, step: int) -> bool:
        """Whether batches up to ``step`` are still unread."""
        return self.first <= step

    def read(self, step: int) -> Tuple[float, int, int]:
        """(loss sum, samples, first batch) of the window ending at ``step``; starts the
        next window. The one host sync of the window."""
        out = (float(self.sum) if self.sum is not None else 0.0, self.samples, self.first)
        self.first, self.sum, self.samples = step + 1, None, 0
        return out


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

    source = open_source(config, backend.main_first)
    data_files = _data_files(source.meta)
    if saved is not None:
        _check_same_files(saved.get("data_files"), data_files)
    eval_size = int(train_cfg["eval_batch_size"])
    splits = source.splits({"train": int(train_cfg["batch_size"]), "valid": eval_size,
                            "test": eval_size}, seed, backend.rank, backend.world)
    for name, split in splits.items():
        if len(split) == 0:
            raise ValueError(f"the {name} split is empty; check data.valid_per_user / "
                             "data.test_per_user")
    loader = splits["train"].loader(seed, int(data_cfg["num_workers"]))
    backend.setup(config, source, splits, output_dir)
    folder = RunFolder(output_dir, main and not resume)
    try:
        folder.start(config, overwrite)
        return _train_epochs(backend, config, output_dir, saved, source, splits, loader,
                             folder, data_files)
    except TrainingInterrupted:
        raise  # progress was saved: the run is resumable
    except BaseException:
        folder.rollback()
        raise


def _train_epochs(backend: Backend, config: Dict[str, Any], output_dir: str,
                  saved: Optional[Dict[str, Any]], source: DataSource,
                  splits: Dict[str, SplitData], loader: EpochLoader, folder: RunFolder,
                  data_files: Dict[str, List[int]]) -> Optional[Dict[str, Any]]:
    """The epoch loop of :func:`run_training`, once the run folder is started;
    ``data_files``: the source's files as :func:`_data_files` saw them at the start."""
    data_cfg, train_cfg = config["data"], config["train"]
    main = backend.main
    summary = source.summary()  # once: a Parquet source reads a row group for it
    if main:
        _print_data(source.meta, summary, data_cfg)

    record = RunRecord(train_cfg["select_metric"], summary, source.meta, backend.world)
    start_epoch, start_batch = 0, 0
    totals = _EpochTotals()
    if saved is not None:
        backend.restore_progress(saved, config)
        record.restore(saved, backend.world)
        start_epoch, start_batch = saved["epoch"], saved["batch"]
        if start_batch:  # check_resume refused a changed world size mid-epoch
            totals = _EpochTotals.from_state(saved["totals"][backend.rank])
    progress = bool(train_cfg["progress"]) and main
    checkpoint_every = int(train_cfg["checkpoint_every"])
    sync_every = int(train_cfg["sync_every"])
    patience = int(train_cfg["patience"])

    def save_progress(epoch: int, batch: int) -> None:
        backend.save_progress({
            "epoch": epoch, "batch": batch, "totals": backend.gather(totals.state()),
            "record": record.state(), "config": config, "world_size": backend.world,
            "data_files": data_files})
        folder.commit()

    with _StopRequest() as stop:
        for epoch in range(start_epoch, int(train_cfg["epochs"])):
            reason = record.stop_reason(patience)  # the record is the same on every rank
            if reason is not None:
                if main:
                    print(f"[early stop] {reason}")
                break
            skip = start_batch if epoch == start_epoch else 0
            if skip == 0:
                totals = _EpochTotals()
            loader.set_epoch(epoch, skip)
            bar = tqdm(total=skip + len(loader), initial=skip, desc=f"epoch {epoch}",
                       disable=not progress, mininterval=1.0, unit="batch")
            start = time.perf_counter() - totals.elapsed
            step = skip
            # Losses stay on the device between syncs: the host reads them (and the ranks
            # agree on stopping) every train.sync_every steps, at checkpoints and at the end.
            window = _LossWindow(step + 1)

            def sync(step: int) -> bool:
                """Read the pending losses; raise on a non-finite one; True: stop now."""
                backend.sync_statistics()
                value, samples, first = window.read(step)
                mine = not math.isfinite(value)
                stopping, bad = backend.any([stop.signal is not None, mine])
                if bad:
                    bar.close()
                    # Every rank is here (the flag was agreed): say which ranks, and with one
                    # batch per read what went non-finite first on each.
                    reports = backend.gather(
                        (mine, backend.non_finite_report() if mine and first == step else ""))
                    raise FloatingPointError(_non_finite_message(
                        backend, epoch, first, step, reports))
                totals.loss += value
                totals.samples += samples
                totals.elapsed = time.perf_counter() - start
                bar.update(step - first + 1)
                bar.set_postfix(totals.postfix(), refresh=False)
                return stopping

            for loss, n in backend.train_batches(loader):
                step += 1
                window.add(loss, n)
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
            if window.open(step):
                sync(step)  # the epoch's last batches (a stop request waits for the epoch end)
            bar.close()
            loss_sum, samples = backend.sum([totals.loss, float(totals.samples)])
            elapsed = max(backend.gather(totals.elapsed))
            speed = samples / max(elapsed, 1e-9)
            valid = backend.share(evaluate_split(backend, splits["valid"], progress, "valid"))
            if record.add_epoch(epoch, loss_sum / max(samples, 1.0), speed, valid):
                backend.save_best(epoch, config, source.vocab,
                                  {"pooled_multi_hot": list(source.meta.get("multi_hot", []))})
            if main:
                print(record.epoch_line(epoch))
            save_progress(epoch + 1, 0)
            if main:
                record.write(output_dir)
            if backend.any([stop.signal is not None])[0]:
                raise TrainingInterrupted(stop.signal or signal.SIGTERM, backend.progress_path)

    backend.load_best()
    test = evaluate_split(backend, splits["test"], progress, "test")
    if not main:
        return None
    test_split = splits["test"]
    popularity = evaluate_predictions(torch.as_tensor(popularity_scores(source, test_split)),
                                      test_split.labels(), test_split.user_ids())
    note = f", {backend.world} ranks" if backend.world > 1 else ""
    print(record.finish(test, popularity, output_dir, note))
    return record.results


def _data_files(meta: Dict[str, Any]) -> Dict[str, List[int]]:
    """Size and modification time (ns) of every data file a source reads (``meta["files"]``:
    split -> paths, as the Parquet source lists them), for ``--resume`` to compare."""
    out: Dict[str, List[int]] = {}
    for paths in (meta.get("files") or {}).values():
        for path in paths:
            stat = os.stat(path)
            out[path] = [int(stat.st_size), int(stat.st_mtime_ns)]
    return out


def _check_same_files(saved: Optional[Dict[str, List[int]]],
                      now: Dict[str, List[int]]) -> None:
    """Refuse to resume over data files that changed since the checkpoint: its position
    counts their rows, so the run would train rows twice or skip them."""
    if saved is None:  # a checkpoint of an earlier version: nothing recorded
        return
    advice = ("the checkpoint's position counts the rows the run had read, so continuing "
              "would train rows twice or skip them; restore the files or start a new run "
              "(--overwrite, or another --output-dir)")
    for path in sorted(set(saved) | set(now)):
        if path not in now:
            raise ValueError(f"--resume: {path} was read by the run but is no longer among "
                             f"its files; {advice}")
        if path not in saved:
            raise ValueError(f"--resume: {path} is new among the run's files; {advice}")
        if saved[path] != now[path]:
            raise ValueError(f"--resume: {path} changed since the checkpoint (size "
                             f"{saved[path][0]} -> {now[path][0]} bytes, modified again); "
                             f"{advice}")


def _non_finite_message(backend: Backend, epoch: int, first: int, step: int,
                        reports: List[Tuple[bool, str]]) -> str:
    """The error for a non-finite loss: where (epoch, batch, ranks), what went non-finite
    first (with ``train.sync_every=1``), and a checkpoint to resume from only if one exists."""
    where = f"batch {step}" if first == step else f"batches {first}-{step}"
    ranks = [r for r, (bad, _) in enumerate(reports) if bad]
    if backend.world > 1:
        where += f" on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} " \
                 f"of {backend.world}"
    found = [(r, text) for r, (bad, text) in enumerate(reports) if bad and text]
    if found:
        what = "; ".join(f"rank {r}: {text}" if backend.world > 1 else text for r, text in found)
        detail = f" (first non-finite: {what})"
    else:
        detail = " (train.sync_every=1 names the exact batch and the first non-finite tensor)"
    if backend.progress_saved():
        resume = (f"The last good progress is {backend.progress_path}: resume with --resume "
                  "after lowering the learning rate")
    else:
        resume = ("No progress was saved before it (checkpoints come every "
                  "train.checkpoint_every batches and at each epoch end): start the run again "
                  "with a lower learning rate")
    return f"non-finite training loss at epoch {epoch}, {where}{detail}. {resume}"


def describe_non_finite(logits: Optional[torch.Tensor], model: torch.nn.Module) -> str:
    """What was non-finite in the last training step, for the error: its logits (else the
    loss alone: labels or a regulariser), and the model's parameters and buffers that are
    non-finite after the step (the optimizer spreads a non-finite gradient into them). Runs
    only once a loss was found non-finite, so its host reads cost training nothing."""
    first = ("the loss alone (the logits were finite: check the labels or the regulariser)")
    if logits is not None:
        bad = int((~torch.isfinite(logits)).sum())
        if bad:
            first = f"logits ({bad} of {logits.numel()} values)"
    broken: List[str] = []
    named = [("parameter", n, t) for n, t in model.named_parameters()]
    named += [("buffer", n, t) for n, t in model.named_buffers()]
    for kind, name, tensor in named:
        # A sharded table's state is its local shards (ShardedTensor), a plain one a tensor.
        parts = ([s.tensor for s in tensor.local_shards()] if hasattr(tensor, "local_shards")
                 else [tensor])
        if any(p.is_floating_point() and not bool(torch.isfinite(p).all()) for p in parts):
            broken.append(f"{kind} {plain_name(name)}")
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        return f"{first}; non-finite after the step: {broken[0]}{more}"
    return first


def _print_data(meta: Dict[str, Any], summary: Dict[str, Any], data_cfg: Dict[str, Any]) -> None:
    print(f"[data] {meta.get('dataset', data_cfg['dataset'])} protocol={meta.get('protocol')}: "
          + ", ".join(f"{k} {v['samples']} samples"
                      + (f" / {v['users']} users" if "users" in v else "")
                      for k, v in summary.items()))
    if meta.get("behaviours_cut"):
        print(f"[data] max_history={meta['max_history']}: {meta['histories_truncated']} histories "
              f"truncated, {meta['behaviours_cut']} oldest behaviours cut")
    if meta.get("skipped_lines"):
        print(f"[data] skipped malformed lines: {meta['skipped_lines']}")
