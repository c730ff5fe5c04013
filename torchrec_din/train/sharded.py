"""Training on 1 to N processes: planner + DistributedModelParallel + TrainPipelineSparseDist.

One path for every world size. ``python -m torchrec_din train`` runs it on a 1-rank world it
creates in the process; ``torchrun --nproc_per_node N -m torchrec_din train`` on N ranks
(gloo on CPU, nccl on CUDA). Tables are sharded by TorchRec's planner (CPU constraints by
default, per-table choices from ``tables.<name>`` in the config) and updated inside the
backward pass by FBGEMM's fused optimizer (``train.embedding_optimizer``), which touches only
the rows a batch looked up: a step costs what the batch costs, not what the tables hold, and
a model trained in one process and on a cluster follows one recipe. The dense part is data
parallel, updated by ``train.optimizer``. Every rank trains on its own batches of one global
order. Evaluation gathers every rank's predictions, so rank 0 computes AUC / GAUC over the
whole split exactly as one process would. Rank 0 writes metrics.json, curves.png and an
unsharded ``best.pt`` (gathered, so ``export`` / ``score`` work on it); ``best_dcp/`` holds
the sharded best state (torch.distributed.checkpoint), used for the final test evaluation;
``last_dcp/`` the progress (model, fused and dense optimizer states, per-rank RNG, position),
written at every epoch end, every ``train.checkpoint_every`` batches and on SIGTERM, for
``--resume``. The epoch loop itself is the shared engine (``train.engine``); this module is
its backend.
"""

import datetime
import gc
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_din.data.source import DataSource, EpochLoader, SplitData
from torchrec_din.distributed import (
    dense_parameters,
    gather_state_dict,
    make_sharders,
    shard,
    sync_buffers,
)
from torchrec_din.models import DINTrain
from torchrec_din.build import build_model
from torchrec_din.config import resolve_device
from torchrec_din.io import CheckpointError, atomic_save, load_checkpoint
from torchrec_din.train.engine import Backend, describe_non_finite, run_training
from torchrec_din.train.optim import apply_train_config, make_optimizer, weight_decay
from torchrec_din.train.regularization import make_regularizer, MBAPenalty
from torchrec_din.planning import constraints_for, embedding_optimizer

T = TypeVar("T")

# Why MBA is refused with multi-hot pooled features here (rather than silently skipped).
MBA_MULTI_HOT = (
    "train.regularization=mba takes each table's rows from the collections' outputs (the "
    "tables update inside the backward pass, so a loss on their weights could not reach "
    "them), and a multi-hot pooled feature's output is the sum of its bag, not its rows: "
    "{features}. Use train.regularization=l2 or none")


class ShardedBackend(Backend):
    """Planner + DistributedModelParallel + TrainPipelineSparseDist, on 1 to N ranks.

    Launched by torchrun (``LOCAL_RANK`` set) it joins torchrun's world, each rank on its
    LOCAL_RANK GPU (nccl) or the CPU (gloo); otherwise it creates a 1-rank world in this
    process on ``train.device``. Tables are sharded by TorchRec's planner (CPU constraints
    by default, per-table choices from ``tables.<name>``) and updated by FBGEMM's fused
    optimizer ``train.embedding_optimizer``; the dense part is data parallel. Checkpoints:
    ``last_dcp/`` (progress) and ``best_dcp/`` (best epoch) through
    torch.distributed.checkpoint, so a run continues on any number of ranks from an epoch
    boundary; ``best.pt`` is the gathered, unsharded best model, for ``export`` / ``score``.
    """

    def __init__(self, config: Dict[str, Any]) -> None:
        # Launched by torchrun (or a launcher that sets the same env:// variables).
        self.launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        if self.launched:
            self.device = (torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
                           if torch.cuda.is_available() else torch.device("cpu"))
        else:
            self.device = resolve_device(config["train"]["device"])
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        self.last_logits: Optional[torch.Tensor] = None  # the last step's, for error reports
        self.timeout = datetime.timedelta(seconds=float(config["train"]["dist_timeout_s"]))

    def __enter__(self) -> "ShardedBackend":
        if dist.is_initialized():
            raise ValueError("a torch.distributed process group is already initialised in "
                             "this process; training creates its own (one process) or joins "
                             "torchrun's: call it outside your own group")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # A frozen or dead rank ends the job after dist_timeout_s instead of gloo's 30 minutes.
        if self.launched:
            dist.init_process_group(self.backend, timeout=self.timeout)
        else:  # one process: a 1-rank world of its own, no rendezvous, no port
            dist.init_process_group(self.backend, store=dist.HashStore(), rank=0,
                                    world_size=1, timeout=self.timeout)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # Control messages (stop flags, totals) on CPU: a small gloo collective at each loss
        # read (every train.sync_every steps), not on the accelerator's stream.
        self.control = dist.new_group(backend="gloo") if self.backend == "nccl" else None
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            if exc_type is None:
                dist.barrier()  # nobody tears down the group while a peer still talks
        finally:
            # Free the pipeline and the sharded model (and any collective handle they hold)
            # now, while the process group and the interpreter are whole.
            for name in ("pipeline", "dense_opt", "dmp"):
                self.__dict__.pop(name, None)
            gc.collect()
            dist.destroy_process_group()

    def main_first(self, fn: Callable[[], T]) -> T:
        if self.main:
            out = fn()
        dist.barrier()
        if not self.main:
            out = fn()
        return out

    def read_progress(self, output_dir: str) -> Dict[str, Any]:
        self.progress_path = os.path.join(output_dir, "last_dcp")
        if (not os.path.exists(self.progress_path)
                and os.path.isfile(os.path.join(output_dir, "last.pt"))):
            raise ValueError(
                f"{os.path.join(output_dir, 'last.pt')} was written by an earlier version, "
                "whose one-process training kept dense embedding tables and another "
                "optimizer state; it cannot continue here. Start a new run (--overwrite, or "
                "another --output-dir); its best.pt still exports and scores")
        return load_checkpoint(os.path.join(self.progress_path, "meta.pt"))

    def check_resume(self, saved: Dict[str, Any], config: Dict[str, Any]) -> None:
        old_emb = embedding_optimizer(saved["config"]["train"], self.device.type)[:2]
        new_emb = embedding_optimizer(config["train"], self.device.type)[:2]
        if old_emb != new_emb:
            raise ValueError(f"--resume cannot change the sharded tables' fused optimizer or "
                             f"its learning rate ({old_emb} -> {new_emb}); start a new run")
        if saved["batch"] and saved["world_size"] != self.world:
            raise ValueError(
                f"{self.progress_path} was written mid-epoch by {saved['world_size']} ranks; "
                f"its position counts their batches, so it continues on "
                f"{saved['world_size']} ranks only. Resume with --nproc_per_node "
                f"{saved['world_size']}; the checkpoint written at the epoch end continues on "
                "any number of ranks")

    def setup(self, config: Dict[str, Any], source: DataSource,
              splits: Dict[str, SplitData], output_dir: str) -> None:
        train_cfg = config["train"]
        multi_hot = list(source.meta.get("multi_hot", []))
        if train_cfg["regularization"] == "mba" and multi_hot:
            raise ValueError(MBA_MULTI_HOT.format(features=multi_hot))
        self.output_dir = output_dir
        self.progress_path = os.path.join(output_dir, "last_dcp")
        model = DINTrain(build_model(source.vocab, config, device=torch.device("meta")),
                         source.shared_histories)
        emb_opt, emb_lr, note = embedding_optimizer(train_cfg, self.device.type)
        if note and self.main:
            print(f"[sharding] {note}")
        sharders = make_sharders(emb_opt, emb_lr, self.device.type, weight_decay(train_cfg))
        mean_history = source.summary()["train"]["mean_history"]
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=self.world, compute_device=self.device.type,
                              local_world_size=(int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                   self.world))
                                                if self.launched else 1)),
            batch_size=train_cfg["batch_size"],
            constraints=constraints_for(config, model, mean_history, self.device.type))
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        if self.main and self.world > 1:
            print(f"[plan]\n{plan}")
        elif self.main:
            print(f"[tables] FBGEMM's fused {emb_opt} (lr {emb_lr:g}) on the rows each batch "
                  f"looks up; the dense part {train_cfg['optimizer']} (lr "
                  f"{train_cfg['learning_rate']:g})")
        mba = make_regularizer(model.model, source, train_cfg)  # before shard() swaps tables
        self.dmp = shard(model, plan, sharders, device=self.device)
        if mba is not None:
            # After sharding: DMP materialises the meta model's own buffers, not these. The
            # penalty reaches the sharded rows through their lookups' gradients.
            self.dmp.module.penalty = MBAPenalty(mba.to(self.device))
        self.compiled, self.compile_reported = bool(train_cfg["compile"]), False
        if self.compiled:
            # The dense part (interaction, over arch) under torch.compile, inside the pipeline:
            # TrainPipelineSparseDist traces the model with the sharded collections as leaves
            # and calls the compiled submodules as it finds them.
            from torchrec_din.models import compile_dense

            compile_dense(self.dmp.module.model)  # dmp.module: the unwrapped DINTrain
            if self.main:
                print("[compile] the dense part is compiled (torch.compile, dynamic shapes); "
                      "the first steps compile it")
        # The tables update in the backward pass (fused); this optimizer owns the rest.
        self.dense_opt = make_optimizer([p for _, p in dense_parameters(self.dmp)], train_cfg)
        self.pipeline = TrainPipelineSparseDist(self.dmp, self.dense_opt, self.device)
        self.attached = True

    def restore_progress(self, saved: Dict[str, Any], config: Dict[str, Any]) -> None:
        state = {"model": self.dmp.state_dict(), "optim": self.dmp.fused_optimizer.state_dict()}
        _load_sharded(state, self.progress_path)
        self.dmp.load_state_dict(state["model"])
        self.dmp.fused_optimizer.load_state_dict(state["optim"])
        self.dense_opt.load_state_dict(saved["dense_optim"])
        apply_train_config(self.dense_opt, config["train"])  # a changed learning rate applies
        if saved["world_size"] == self.world:
            torch.set_rng_state(saved["rng"][self.rank])

    def train_batches(self, loader: EpochLoader) -> Iterator[Tuple[torch.Tensor, int]]:
        if not self.attached:
            self.pipeline.attach(self.dmp)
            self.attached = True
        self.dmp.train()
        it = iter(loader)
        first = self.compiled and not self.compile_reported
        while True:
            start = time.perf_counter()
            try:
                loss, self.last_logits, labels = self.pipeline.progress(it)
            except StopIteration:
                break
            if first and self.main:  # the first step compiles the forward and backward graphs
                first, self.compile_reported = False, True
                print(f"[compile] first step {time.perf_counter() - start:.1f} s "
                      f"(torch.compile of the dense part, dynamic shapes)")
            yield loss, int(labels.numel())
        # The pipeline keeps no batch in flight past the end; evaluation runs the plain DMP.
        self.pipeline.detach()
        self.attached = False
        if self.compiled and self.main:
            from torch._dynamo.utils import counters

            print(f"[compile] graphs compiled so far: {counters['stats']['unique_graphs']} "
                  f"(more than the first epoch's means ragged batches recompiled)")

    def progress_saved(self) -> bool:
        # A DCP folder is complete once rank 0 wrote its meta.pt and swapped it in.
        return os.path.isfile(os.path.join(self.progress_path, "meta.pt"))

    def non_finite_report(self) -> str:
        return describe_non_finite(self.last_logits, self.dmp)

    def predict(self, split: SplitData, progress: bool,
                desc: str) -> Tuple[Optional[np.ndarray], float]:
        """Every rank scores a contiguous part; rank 0 gets all logits."""
        self.sync_statistics()  # one model on every rank
        logits: List[np.ndarray] = []
        labels: List[np.ndarray] = []
        start = time.perf_counter()
        self.dmp.eval()
        with torch.no_grad():
            for batch, scored in split.eval_batches():
                _, (_, out, label) = self.dmp(batch.to(self.device))
                if scored:
                    logits.append(out.cpu().numpy())
                    labels.append(label.cpu().numpy())
        elapsed = time.perf_counter() - start
        gathered = self.gather((np.concatenate(logits) if logits else np.zeros(0, np.float32),
                                np.concatenate(labels) if labels else np.zeros(0, np.float32)))
        self.dmp.train()
        if not self.main:
            return None, elapsed
        # Metrics pair logits with the split's labels and groups by position: batches out of
        # the split's order would give silently wrong metrics, so check the labels they gave.
        got = np.concatenate([g[1] for g in gathered])
        if not np.array_equal(got, np.asarray(split.labels(), got.dtype)):
            raise RuntimeError(f"{desc}: the evaluation batches are not in the split's order "
                               "(their labels differ from the split's); metrics would pair "
                               "predictions with the wrong labels")
        return np.concatenate([g[0] for g in gathered]), elapsed

    def save_progress(self, record: Dict[str, Any]) -> None:
        # Model + fused optimizer state sharded, and (rank 0) the rest in the same folder,
        # swapped in together.
        self.sync_statistics()
        rngs = self.gather(torch.get_rng_state())
        _save_sharded({"model": self.dmp.state_dict(),
                       "optim": self.dmp.fused_optimizer.state_dict()},
                      self.progress_path, self.rank,
                      meta={**record, "dense_optim": self.dense_opt.state_dict(), "rng": rngs})

    def save_best(self, epoch: int, config: Dict[str, Any], vocab: Dict[str, int],
                  serving: Dict[str, Any]) -> None:
        self.sync_statistics()
        _save_sharded(self.dmp.state_dict(), os.path.join(self.output_dir, "best_dcp"),
                      self.rank)
        full = gather_state_dict(self.dmp)
        if self.main:
            atomic_save({"model": {k[len("model."):]: v for k, v in full.items()
                                   if k.startswith("model.")},
                         "epoch": epoch, "config": config, "vocab": vocab, "serving": serving,
                         "world_size": self.world}, os.path.join(self.output_dir, "best.pt"))

    def load_best(self) -> None:
        state = self.dmp.state_dict()
        _load_sharded(state, os.path.join(self.output_dir, "best_dcp"))
        self.dmp.load_state_dict(state)

    def sync_statistics(self) -> None:
        # DDP under DMP leaves buffers rank-local (broadcast_buffers=False): average them.
        sync_buffers(self.dmp)  # the default group: the buffers live on the model's device

    def any(self, flags: List[bool]) -> List[bool]:
        t = torch.tensor([int(f) for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return [bool(v) for v in t.tolist()]

    def sum(self, values: List[float]) -> List[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.control)
        return t.tolist()

    def gather(self, obj: Any) -> List[Any]:
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def share(self, obj: T) -> T:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


def train(config: Dict[str, Any], output_dir: str, resume: bool = False,
          overwrite: bool = False) -> Optional[Dict[str, Any]]:
    """Train in this process (a 1-rank world) or, under torchrun, on its ranks (see
    :func:`torchrec_din.train.engine.run_training`).

    Writes ``config.yaml``, ``metrics.json``, ``curves.png``, ``best.pt`` (the best epoch's
    model, unsharded), ``best_dcp/`` and ``last_dcp/`` (all progress: model, optimizers, RNG,
    position in the epoch) to ``output_dir``. ``resume=True`` continues from ``last_dcp/``:
    from an epoch-end checkpoint with any number of ranks (torch.distributed.checkpoint
    reshards on load), from a mid-epoch one (``train.checkpoint_every``, SIGTERM) with the
    same number.

    Returns:
        Optional[Dict[str, Any]]: metrics.json's content on rank 0, None elsewhere.
    """
    with ShardedBackend(config) as backend:
        return run_training(backend, config, output_dir, resume, overwrite)


def _load_sharded(state: Dict[str, Any], path: str) -> None:
    """``dcp.load`` with an error that names the folder when its files are damaged."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, checkpoint_id=path)
    except (Exception, CheckpointException) as e:  # the latter is a BaseException
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"sharded checkpoint {path} is damaged or incomplete ({type(e).__name__}: "
            f"{first[-1][:200] if first else ''}); restore it from a backup or start over "
            "with --overwrite") from None


def _save_sharded(state: Dict[str, Any], path: str, rank: int,
                  meta: Optional[Dict[str, Any]] = None) -> None:
    """DCP save (plus rank 0's ``meta.pt``) into a temp folder, then rank 0 swaps it in: a
    killed save never replaces the previous good checkpoint, and model, optimizer and
    progress always come from the same epoch."""
    tmp = path + ".tmp"
    if rank == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)
    dist.barrier()
    dcp.save(state, checkpoint_id=tmp)
    if rank == 0 and meta is not None:
        atomic_save(meta, os.path.join(tmp, "meta.pt"))
    dist.barrier()
    if rank == 0:
        old = path + ".old"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        if os.path.exists(old):
            shutil.rmtree(old)
    dist.barrier()
