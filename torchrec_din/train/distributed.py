"""Sharded training under torchrun: planner + DistributedModelParallel + TrainPipelineSparseDist.

``torchrun --nproc_per_node N -m torchrec_din train --config FILE`` lands here (gloo on CPU,
nccl on CUDA). Tables are sharded by TorchRec's planner (CPU constraints by default, per-table
choices from ``tables.<name>`` in the config) and updated by a fused optimizer of the same
kind and learning rate as ``train.optimizer``; the dense part is data parallel. Every rank
trains on its own batches of one global order. Evaluation gathers every rank's predictions,
so rank 0 computes AUC / GAUC over the whole split exactly as one process would. Rank 0 writes
metrics.json, curves.png and an unsharded ``best.pt`` (gathered, the same format as
single-process training, so ``export`` / ``score`` work on it); ``best_dcp/`` holds the
sharded best state (torch.distributed.checkpoint), used for the final test evaluation;
``last_dcp/`` the state at the last epoch end (model, fused and dense optimizer states, RNG,
progress) for ``--resume`` with any number of ranks.
"""

import datetime
import os
import shutil
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_din.data.loader import DINDataset, make_loader
from torchrec_din.distributed import (
    dense_parameters,
    gather_state_dict,
    make_sharders,
    shard,
)
from torchrec_din.train.planning import constraints_for, embedding_optimizer
from torchrec_din.metrics import evaluate_predictions
from torchrec_din.models import DINTrain
from torchrec_din.train.builder import build_model, build_table
from torchrec_din.train.checkpoint import (
    atomic_save,
    atomic_write_json,
    check_resumable,
    load_checkpoint,
)
from torchrec_din.train.loop import (
    apply_train_config,
    early_stop,
    finish_results,
    make_datasets,
    make_optimizer,
    plot_curves,
    start_run_record,
)


def _evaluate(dmp: torch.nn.Module, dataset: DINDataset, batch_size: int, rank: int,
              world: int, device: torch.device) -> Optional[Dict[str, Any]]:
    """Every rank scores a contiguous part; rank 0 gets all predictions and the metrics."""
    parts = np.array_split(np.arange(len(dataset)), world)
    num_batches = max((p.size + batch_size - 1) // batch_size for p in parts)
    mine = parts[rank]
    logits: List[np.ndarray] = []
    start = time.perf_counter()
    dmp.eval()
    with torch.no_grad():
        for i in range(num_batches):
            chunk = mine[i * batch_size:(i + 1) * batch_size]
            # The sharded forward is collective: a rank out of samples runs a dummy batch.
            batch = dataset[chunk if chunk.size else parts[0][:1]]
            _, (_, out, _) = dmp(batch.to(device))
            if chunk.size:
                logits.append(out.cpu().numpy())
    elapsed = time.perf_counter() - start
    local = np.concatenate(logits) if logits else np.zeros(0, np.float32)
    gathered: List[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    dmp.train()
    if rank != 0:
        return None
    all_logits = np.concatenate(gathered)
    table = dataset.table
    labels = table.label[dataset.rows]
    out = evaluate_predictions(torch.as_tensor(all_logits), labels, dataset.user_ids())
    out["samples_per_sec"] = len(dataset) / max(elapsed, 1e-9)
    return out


def train_distributed(config: Dict[str, Any], output_dir: str, resume: bool = False,
                      overwrite: bool = False) -> Optional[Dict[str, Any]]:
    """Sharded training; returns metrics.json's content on rank 0 (None elsewhere).

    ``resume=True`` continues from ``last_dcp/`` (model, optimizers and progress, written at
    every epoch end), with any number of ranks: torch.distributed.checkpoint reshards on load.
    """
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # A frozen or dead rank ends the job after this long instead of gloo's 30 minutes.
    timeout = datetime.timedelta(seconds=float(config["train"]["dist_timeout_s"]))
    dist.init_process_group(backend, timeout=timeout)
    try:
        result = _train(config, output_dir, backend, resume, overwrite)
        dist.barrier()  # nobody tears down gloo while a peer still talks
        return result
    finally:
        dist.destroy_process_group()


def _train(config: Dict[str, Any], output_dir: str, backend: str,
           resume: bool, overwrite: bool) -> Optional[Dict[str, Any]]:
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if backend == "nccl" \
        else torch.device("cpu")
    data_cfg, train_cfg = config["data"], config["train"]
    if train_cfg["regularization"] == "mba":
        raise ValueError("train.regularization=mba is not supported with sharded tables yet; "
                         "use l2 or none")
    progress = bool(train_cfg["progress"]) and rank == 0
    seed = int(config["seed"])
    torch.manual_seed(seed)
    last_dcp = os.path.join(output_dir, "last_dcp")
    meta_path = os.path.join(last_dcp, "meta.pt")
    meta: Dict[str, Any] = {}
    if resume:
        meta = load_checkpoint(meta_path)
        changes = check_resumable(meta["config"], config)
        old_emb = embedding_optimizer(meta["config"]["train"], device.type)[:2]
        new_emb = embedding_optimizer(train_cfg, device.type)[:2]
        if old_emb != new_emb:
            raise ValueError(f"--resume cannot change the sharded tables' fused optimizer or "
                             f"its learning rate ({old_emb} -> {new_emb}); start a new run")
        if changes and rank == 0:
            print(f"[resume] applying {', '.join(changes)}")
    if rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        table = build_table(data_cfg, seed)  # rank 0 fills the cache first
    dist.barrier()
    if rank != 0:
        table = build_table(data_cfg, seed)
    datasets = make_datasets(table, data_cfg)
    loader = make_loader(datasets["train"], train_cfg["batch_size"], True, seed,
                         int(data_cfg["num_workers"]), rank, world)

    model = DINTrain(build_model(table.vocab, config, device=torch.device("meta")),
                     bool(data_cfg["group_histories"]))
    emb_opt, emb_lr, note = embedding_optimizer(train_cfg, device.type)
    if note and rank == 0:
        print(f"[sharding] {note}")
    sharders = make_sharders(emb_opt, emb_lr, device.type)
    mean_history = table.summary()["train"]["mean_history"]
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device=device.type,
                          local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world))),
        batch_size=train_cfg["batch_size"],
        constraints=constraints_for(config, model, mean_history, device.type))
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    if rank == 0:
        print(f"[plan]\n{plan}")
    dmp = shard(model, plan, sharders, device=device)
    # The tables update in the backward pass (fused); this optimizer owns the rest.
    dense_opt = make_optimizer([p for _, p in dense_parameters(dmp)], train_cfg)
    pipeline = TrainPipelineSparseDist(dmp, dense_opt, device)

    results: Dict[str, Any] = {"data": {"summary": table.summary(), "meta": table.meta},
                               "epochs": [], "best_epoch": None, "world_size": world}
    best_gauc = -float("inf")
    best_dcp = os.path.join(output_dir, "best_dcp")
    speeds: List[float] = []
    start_epoch = 0
    if rank == 0:
        start_run_record(output_dir, config, overwrite)
    if resume:
        state = {"model": dmp.state_dict(), "optim": dmp.fused_optimizer.state_dict()}
        dcp.load(state, checkpoint_id=last_dcp)
        dmp.load_state_dict(state["model"])
        dmp.fused_optimizer.load_state_dict(state["optim"])
        dense_opt.load_state_dict(meta["dense_optim"])
        apply_train_config(dense_opt, train_cfg)  # a changed learning rate takes effect
        if meta["world_size"] == world:
            torch.set_rng_state(meta["rng"][rank])
        results, best_gauc, speeds = meta["results"], meta["best_gauc"], meta["speeds"]
        results["world_size"] = world
        start_epoch = meta["epoch"]
        if rank == 0:
            print(f"[resume] {last_dcp}: {meta['world_size']} ranks -> {world}, continuing at "
                  f"epoch {start_epoch}")
    patience = int(train_cfg["patience"])
    for epoch in range(start_epoch, int(train_cfg["epochs"])):
        stop = torch.tensor([0])
        if rank == 0:  # rank 0 holds the validation record; everybody follows its decision
            reason = early_stop(results, patience)
            if reason is not None:
                print(f"[early stop] {reason}")
                stop[0] = 1
        dist.broadcast(stop, src=0)
        if int(stop[0]):
            break
        loader.sampler.set_epoch(epoch)
        if epoch > start_epoch:
            pipeline.attach(dmp)
        dmp.train()
        it = iter(loader)
        total_loss, seen = 0.0, 0
        bar = tqdm(total=len(loader), desc=f"epoch {epoch}", disable=not progress,
                   mininterval=1.0, unit="batch")
        start = time.perf_counter()
        while True:
            try:
                loss, _, labels = pipeline.progress(it)
            except StopIteration:
                break
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch} on rank {rank}")
            total_loss += loss.item() * labels.numel()
            seen += labels.numel()
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
        bar.close()
        elapsed = time.perf_counter() - start
        pipeline.detach()
        stats = torch.tensor([total_loss, float(seen)])
        dist.all_reduce(stats)
        speed = float(stats[1]) / max(elapsed, 1e-9)
        speeds.append(speed)
        valid = _evaluate(dmp, datasets["valid"], train_cfg["eval_batch_size"], rank, world, device)
        improved = torch.tensor([0])
        if rank == 0:
            record = {"epoch": epoch, "train_loss": float(stats[0] / stats[1]),
                      "train_samples_per_sec": speed, "valid": valid}
            results["epochs"].append(record)
            print(f"[epoch {epoch}] loss {record['train_loss']:.4f}  valid auc {valid['auc']:.4f} "
                  f"gauc {valid['gauc']:.4f} logloss {valid['logloss']:.4f}  {speed:.0f} samples/s "
                  f"({world} ranks)")
            if valid["gauc"] > best_gauc:
                best_gauc = valid["gauc"]
                results["best_epoch"] = epoch
                improved[0] = 1
        dist.broadcast(improved, src=0)
        if int(improved[0]):
            _save_sharded(dmp.state_dict(), best_dcp, rank)
            full = gather_state_dict(dmp)
            if rank == 0:
                atomic_save({"model": {k[len("model."):]: v for k, v in full.items()
                                       if k.startswith("model.")},
                             "epoch": epoch, "config": config, "vocab": table.vocab,
                             "world_size": world}, os.path.join(output_dir, "best.pt"))
        # Progress: sharded model + fused optimizer state, and (rank 0) the rest in the same
        # folder, swapped in together.
        rngs: List[Any] = [None] * world
        dist.all_gather_object(rngs, torch.get_rng_state())
        _save_sharded({"model": dmp.state_dict(), "optim": dmp.fused_optimizer.state_dict()},
                      last_dcp, rank,
                      meta={"epoch": epoch + 1, "results": results, "best_gauc": best_gauc,
                            "speeds": speeds, "dense_optim": dense_opt.state_dict(),
                            "rng": rngs, "world_size": world, "config": config})
        if rank == 0:
            atomic_write_json(results, os.path.join(output_dir, "metrics.json"))
            plot_curves(results["epochs"], os.path.join(output_dir, "curves.png"))

    state = dmp.state_dict()
    dcp.load(state, checkpoint_id=best_dcp)
    dmp.load_state_dict(state)
    test = _evaluate(dmp, datasets["test"], train_cfg["eval_batch_size"], rank, world, device)
    if rank != 0:
        return None
    finish_results(results, test, table, datasets, speeds,
                   os.path.join(output_dir, "metrics.json"), note=f", {world} ranks")
    return results


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
