"""torchrun, 2 CPU ranks: sharded training writes the same outputs as one process, and its
gathered best.pt is the model that the sharded test evaluation scored."""

import json
import subprocess
import sys

import pytest

from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.loader import DINDataset, make_loader
from torchrec_din.metrics import evaluate_predictions
from torchrec_din.serve import load_trained
from torchrec_din.io import load_checkpoint
from torchrec_din.data.registry import build_table
from torchrec_din.train.predict import predict

SETS = ["data.synthetic.num_users=400", "data.synthetic.num_items=300",
        "data.synthetic.num_cates=8", "data.synthetic.samples_per_user=10",
        "data.synthetic.max_length=40", "train.epochs=2", "train.batch_size=128",
        "train.progress=false"]


def _run(out, nproc, extra, cache, resume=False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "-m", "torchrec_din", "train", "--config", "configs/synthetic_din.yaml",
           "--output-dir", str(out)] + (["--resume"] if resume else [])
    for s in SETS + [f"data.cache_dir={cache}"] + list(extra):
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _ok(proc) -> None:
    """The run succeeded; otherwise show what it printed."""
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_two_rank_training(tmp_path) -> None:
    out = tmp_path / "run"
    proc = _run(out, 2, [], tmp_path / "cache")
    _ok(proc)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["epochs"]) == 2
    test = metrics["test"]
    for key in ("auc", "gauc", "logloss", "samples_per_sec"):
        assert isinstance(test[key], float)
    assert (out / "curves.png").exists() and (out / "best_dcp").is_dir()

    # The gathered, unsharded best.pt scores the test split like the sharded model did.
    model, state = load_trained(str(out))
    table = build_table(state["config"]["data"], int(state["config"]["seed"]))
    ds = DINDataset(table, "test", FeatureSchema.from_config(state["config"]["features"]))
    logits, labels, _ = predict(model, make_loader(ds, 512, shuffle=False))
    single = evaluate_predictions(logits, labels, ds.user_ids())
    assert test["samples"] == single["samples"] == len(ds)
    assert single["auc"] == pytest.approx(test["auc"], abs=1e-5)
    assert single["gauc"] == pytest.approx(test["gauc"], abs=1e-5)


def test_sharded_resume_matches_uninterrupted_and_reshards(tmp_path) -> None:
    cache = tmp_path / "cache"
    _ok(_run(tmp_path / "full", 2, ["train.epochs=2"], cache))
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())

    part = tmp_path / "part"
    _ok(_run(part, 2, ["train.epochs=1"], cache))
    cmd_out = _run(part, 2, ["train.epochs=2"], cache, resume=True)
    _ok(cmd_out)
    assert "continuing at epoch 1" in cmd_out.stdout
    resumed = json.loads((part / "metrics.json").read_text())
    for key in ("auc", "gauc", "logloss"):
        assert resumed["test"][key] == pytest.approx(full["test"][key], abs=1e-6), key
    assert [e["train_loss"] for e in resumed["epochs"]] == pytest.approx(
        [e["train_loss"] for e in full["epochs"]], abs=1e-6)

    # The 2-rank checkpoint continues on 1 rank (torch.distributed.checkpoint reshards).
    one = _run(part, 1, ["train.epochs=3"], cache, resume=True)
    _ok(one)
    assert "2 rank(s) -> 1, continuing at epoch 2" in one.stdout
    metrics = json.loads((part / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and len(metrics["epochs"]) == 3

    # A changed model config cannot resume.
    bad = _run(part, 1, ["train.epochs=4", "model.embedding_dim=8"], cache, resume=True)
    assert bad.returncode != 0
    assert "--resume needs the same 'model' config" in bad.stderr

    # A damaged sharded checkpoint is named, in one line, not a DCP traceback.
    (part / "last_dcp" / ".metadata").write_bytes(b"not a checkpoint")
    damaged = _run(part, 1, ["train.epochs=4"], cache, resume=True)
    assert damaged.returncode != 0
    assert f"sharded checkpoint {part / 'last_dcp'} is damaged or incomplete" in \
        damaged.stderr, damaged.stderr[-3000:]


def test_two_rank_training_on_shared_histories(tmp_path) -> None:
    # The grouped form under the planner, DMP and TrainPipelineSparseDist.
    out = tmp_path / "grouped"
    proc = _run(out, 2, ["train.epochs=1", "data.group_histories=true"], tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["epochs"]) == 1
    assert metrics["test"]["samples"] > 0 and 0.0 <= metrics["test"]["auc"] <= 1.0
    assert metrics["data"]["summary"]["train"]["samples"] > 0


KILL = ["data.synthetic.num_users=1500", "data.synthetic.samples_per_user=20",
        "train.checkpoint_every=5", "model.dropout=0.2"]


def test_sharded_sigterm_mid_epoch_resumes_exactly(tmp_path, sigterm_once_written) -> None:
    """The shared engine gives torchrun runs the single-process crash story: SIGTERM (sent
    to torchrun, which forwards it) makes every rank agree to stop at the same step, write
    a mid-epoch DCP checkpoint and exit; --resume then matches an uninterrupted run."""
    cache = tmp_path / "cache"
    _ok(_run(tmp_path / "full", 2, KILL, cache))
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "-m", "torchrec_din", "train", "--config", "configs/synthetic_din.yaml",
            "--output-dir", str(out)]
    for s in SETS + [f"data.cache_dir={cache}"] + KILL:
        args += ["--set", s]
    meta = out / "last_dcp" / "meta.pt"
    code, output = sigterm_once_written(args, meta)
    assert code != 0, output
    assert "progress saved to" in output and "--resume" in output, output[-4000:]
    saved = load_checkpoint(str(meta))
    # Stopped mid-epoch (94 steps an epoch; the signal comes right after step 5's save).
    assert saved["epoch"] < 2 and saved["batch"] > 0 and saved["world_size"] == 2

    # A mid-epoch checkpoint counts 2-rank batches: one rank is refused, clearly.
    one = _run(out, 1, KILL, cache, resume=True)
    assert one.returncode != 0 and "continues on 2 ranks only" in one.stderr
    resumed_run = _run(out, 2, KILL, cache, resume=True)
    _ok(resumed_run)
    assert f"continuing at epoch {saved['epoch']}, batch {saved['batch']}" in resumed_run.stdout
    resumed = json.loads((out / "metrics.json").read_text())
    assert [e["train_loss"] for e in resumed["epochs"]] == pytest.approx(
        [e["train_loss"] for e in full["epochs"]], abs=1e-6)
    for key in ("auc", "gauc", "logloss"):
        assert resumed["test"][key] == pytest.approx(full["test"][key], abs=1e-6), key


def test_sharded_mba_with_multi_hot_bags_is_refused_with_the_reason() -> None:
    """Under torchrun MBA takes each table's rows from the sharded collections' outputs; a
    multi-hot pooled feature's output is a sum, so that case is refused before anything runs
    (MBA itself trains sharded: tests/distributed/test_equivalence.py)."""
    from types import SimpleNamespace

    from torchrec_din.config import load_config
    from torchrec_din.train.sharded import ShardedBackend

    config = load_config("configs/synthetic_din.yaml", ["train.regularization=mba"])
    backend = ShardedBackend(config)  # no process group is joined for this check
    source = SimpleNamespace(meta={"multi_hot": ["tags"]})
    with pytest.raises(ValueError, match=r"multi-hot pooled feature.*\['tags'\].*regularization=l2 or none"):
        backend.setup(config, source, {}, "unused")


def test_two_rank_training_streams_parquet(tmp_path) -> None:
    """torchrun on Parquet: each rank streams its own part of train (and of valid / test for
    evaluation); the gathered metrics equal one process scoring the gathered best.pt."""
    from torchrec_din.cli import main as cli_main
    from torchrec_din.data.parquet import ParquetSource

    sets = [a for s in SETS + [f"data.cache_dir={tmp_path / 'cache'}"] for a in ("--set", s)]
    assert cli_main(["convert", "--config", "configs/synthetic_din.yaml", "--output",
                     str(tmp_path / "pq"), "--row-group-rows", "300", *sets]) == 0
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
           "torchrec_din", "train", "--config", str(tmp_path / "pq" / "config.yaml"),
           "--output-dir", str(out), "--set", "train.progress=false", "--set", "train.epochs=1",
           "--set", "data.num_workers=2"]
    _ok(subprocess.run(cmd, capture_output=True, text=True, timeout=600))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2

    model, state = load_trained(str(out))
    cfg = state["config"]
    source = ParquetSource(cfg["data"], FeatureSchema.from_config(cfg["features"]),
                           {t: v["num_embeddings"] for t, v in cfg["tables"].items()})
    test = source.splits({"train": 128, "valid": 512, "test": 512}, 0, 0, 1)["test"]
    import torch

    logits, labels, _ = predict(model, torch.utils.data.DataLoader(
        test, batch_size=None, collate_fn=lambda b: b))
    single = evaluate_predictions(logits, labels, test.user_ids())
    assert metrics["test"]["samples"] == single["samples"] == source.file_splits["test"].num_rows
    assert single["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-5)
    assert single["gauc"] == pytest.approx(metrics["test"]["gauc"], abs=1e-5)


def test_compiled_sharded_training_matches_eager(tmp_path) -> None:
    """train.compile under torchrun: the dense part compiled inside TrainPipelineSparseDist
    trains as the eager sharded run does."""
    cache = tmp_path / "cache"
    runs = {}
    for compiled in ("false", "true"):
        out = tmp_path / f"run-{compiled}"
        proc = _run(out, 2, [f"train.compile={compiled}"], cache)
        _ok(proc)
        runs[compiled] = json.loads((out / "metrics.json").read_text())
    assert "[compile] the dense part is compiled" in proc.stdout
    eager, compiled = runs["false"], runs["true"]
    assert [e["train_loss"] for e in compiled["epochs"]] == pytest.approx(
        [e["train_loss"] for e in eager["epochs"]], abs=1e-5)
    for key in ("auc", "gauc", "logloss"):
        assert compiled["test"][key] == pytest.approx(eager["test"][key], abs=1e-5), key


def test_two_ranks_from_scratch_with_dice_reach_one_process_quality(tmp_path) -> None:
    """The README's torchrun command starts from nothing: the model is built on the meta
    device and DistributedModelParallel materialises it. With Dice (attention and over arch)
    that start must be the eager one (reset_parameters), or the run diverges or learns far
    less; equality tests that load one state into both models cannot see it."""
    cache = tmp_path / "cache"
    dice = ["model.attention_activation=dice", "model.over_arch_activation=dice",
            "model.attention_normalization=softmax", "train.epochs=3",
            "data.synthetic.num_users=600", "train.sync_every=1"]
    _ok(_run(tmp_path / "one", 1, dice, cache))
    _ok(_run(tmp_path / "two", 2, dice, cache))
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2
    for a, b in zip(one["epochs"], two["epochs"]):
        # Same recipe (fused row-wise Adagrad tables, Adam dense part on every world size):
        # each epoch's training loss close to the one-process run's.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05), (a, b)
    assert two["test"]["gauc"] > one["test"]["gauc"] - 0.03, (one["test"], two["test"])
    assert two["test"]["auc"] > 0.55, two["test"]  # it learned the planted signal


def test_non_finite_loss_on_two_ranks_names_the_ranks_and_the_tensor(tmp_path) -> None:
    proc = _run(tmp_path / "blowup", 2, ["train.learning_rate=1e30", "train.sync_every=1",
                                         "train.checkpoint_every=0"], tmp_path / "cache")
    assert proc.returncode != 0
    err = proc.stderr
    assert "non-finite training loss at epoch 0, batch " in err, err[-3000:]
    assert " on ranks 0, 1 of 2 (first non-finite: rank 0: logits (" in err, err[-3000:]
    assert "No progress was saved before it" in err and "last_dcp" not in err, err[-3000:]
