"""Bad input and clashing runs get clear errors or correct behaviour, never silent wrong
results: one test per reliability item (tiny synthetic configs, fast)."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from torchrec_din.cli import main
from torchrec_din.data.movielens import FILES, find_movielens_100k, load_movielens_100k
from torchrec_din.data.raw import DataFormatError
from torchrec_din.data.samples import cached_build
from torchrec_din.data.synthetic import generate_synthetic
from torchrec_din.io import atomic_write
from torchrec_din.io import atomic_write_json, load_checkpoint
from torchrec_din.train.checkpoint import check_resumable
from torchrec_din.config import load_config
from torchrec_din.train.rundir import RunLock

TINY = ["data.synthetic.num_users=200", "data.synthetic.num_items=100",
        "data.synthetic.num_cates=5", "data.synthetic.samples_per_user=6",
        "data.synthetic.max_length=20", "train.epochs=1", "train.batch_size=64",
        "train.progress=false", "train.checkpoint_every=0"]


def _train(out, cache, extra=(), flags=()):
    args = ["train", "--config", "configs/synthetic_din.yaml", "--output-dir", str(out)]
    for s in TINY + [f"data.cache_dir={cache}"] + list(extra):
        args += ["--set", s]
    return main(args + list(flags))


# 1. Run folders: locked, never overwritten silently, config.yaml only after validation.
def test_run_folder_is_locked_and_never_silently_reused(tmp_path, capsys) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _train(out, cache) == 0
    first = json.loads((out / "metrics.json").read_text())
    config_before = (out / "config.yaml").read_text()

    assert _train(out, cache, ["train.learning_rate=0.5"]) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert json.loads((out / "metrics.json").read_text()) == first

    # A rejected resume (changed model) leaves the run's record untouched.
    assert _train(out, cache, ["model.embedding_dim=8"], ["--resume"]) == 1
    assert "--resume needs the same 'model' config" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == config_before

    with RunLock(str(out)):  # another run holds the folder
        assert _train(out, cache, flags=["--overwrite"]) == 1
    assert "is in use by another run" in capsys.readouterr().err

    assert _train(out, cache, ["train.learning_rate=0.05"], ["--overwrite"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert len(again["epochs"]) == 1 and again["test"] != first["test"]
    assert "learning_rate: 0.05" in (out / "config.yaml").read_text()

    # Nothing to resume in an empty folder.
    assert _train(tmp_path / "empty", cache, flags=["--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err


def test_overwrite_keeps_the_old_run_when_the_new_config_fails(tmp_path, capsys) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _train(out, cache) == 0
    before = sorted(os.listdir(out))
    assert _train(out, cache, ["data.dataset=movielens-100k",
                               f"data.data_dir={tmp_path / 'nowhere'}"], ["--overwrite"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before and (out / "best.pt").exists()


# 2. An explicit data_dir is used or refused, and metrics name the files actually read.
def test_data_dir_is_never_replaced_by_the_installed_copy(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_movielens_100k(str(tmp_path / "missing"))
    partial = tmp_path / "partial"
    partial.mkdir()
    installed = find_movielens_100k()
    for name in FILES:
        if name != "ml-100k.item":
            shutil.copy(os.path.join(installed, name), partial / name)
    with pytest.raises(FileNotFoundError, match=r"lacks ml-100k.item"):
        find_movielens_100k(str(partial))
    shutil.copy(os.path.join(installed, "ml-100k.item"), partial / "ml-100k.item")
    cache = str(tmp_path / "cache")
    assert load_movielens_100k(cache_dir=cache).meta["source"] == installed
    # Same content, another folder: the cache entry is shared, the source is the new one.
    assert load_movielens_100k(cache_dir=cache, data_dir=str(partial)).meta["source"] == str(partial)


# 3. --resume applies safe train.* changes and refuses the ones that break exactness.
def test_resume_applies_learning_rate_and_refuses_mid_epoch_batch_size(tmp_path, capsys) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _train(out, cache) == 0
    capsys.readouterr()
    assert _train(out, cache, ["train.epochs=2", "train.learning_rate=0.0002"], ["--resume"]) == 0
    assert "applying train.epochs: 1 -> 2, train.learning_rate: 0.001 -> 0.0002" in \
        capsys.readouterr().out
    saved = load_checkpoint(str(out / "last_dcp" / "meta.pt"))
    assert {g["lr"] for g in saved["dense_optim"]["param_groups"]} == {0.0002}

    config = load_config("configs/synthetic_din.yaml")
    changed = load_config("configs/synthetic_din.yaml", ["train.batch_size=32"])
    assert check_resumable(config, changed, mid_epoch=False) == ["train.batch_size: 256 -> 32"]
    with pytest.raises(ValueError, match="checkpoint was taken mid-epoch.*batch_size=256"):
        check_resumable(config, changed, mid_epoch=True)
    with pytest.raises(ValueError, match="cannot change train.optimizer"):
        check_resumable(config, load_config(None, ["train.optimizer=sgd"]) | {
            k: config[k] for k in ("seed", "data", "features", "model", "tables")})


# 4. score: bad arguments never touch the output; histories capped as in training; bounded.
def test_score_arguments_history_cap_and_request_bound(tmp_path, capsys) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _train(out, cache, ["data.max_history=5", "features.pooled=[user]"]) == 0
    scores = tmp_path / "scores.jsonl"
    scores.write_text("precious\n")
    requests = tmp_path / "requests.jsonl"
    long_history = list(range(1, 90))
    lines = [{"id": "long", "user": {"user": 3}, "history": {"item": long_history,
                                                              "cate": [1] * len(long_history)},
              "candidates": {"item": [7, 8], "cate": [1, 2]}},
             {"id": "newest5", "user": {"user": 3}, "history": {"item": long_history[-5:],
                                                                 "cate": [1] * 5},
              "candidates": {"item": [7, 8], "cate": [1, 2]}}]
    requests.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--checkpoint", str(out), "--input", str(requests), "--output",
              str(scores), "--batch-users", "-1"])
    assert exit_info.value.code == 2 and scores.read_text() == "precious\n"
    assert "expected a positive integer" in capsys.readouterr().err

    assert main(["score", "--checkpoint", str(out), "--input", str(requests), "--output",
                 str(scores)]) == 0
    assert "kept the newest 5 behaviours" in capsys.readouterr().out
    got = [json.loads(x) for x in scores.read_text().splitlines()]
    assert got[0]["scores"] == pytest.approx(got[1]["scores"], abs=1e-6)

    assert main(["score", "--checkpoint", str(out), "--input", str(requests), "--output",
                 str(scores), "--max-history", "0", "--max-pairs", "100"]) == 1
    assert "line 1: 2 candidates x 89 behaviours = 178 pairs, over the limit of 100" in \
        capsys.readouterr().err


# 5. (config types: tests/train/test_config.py) and command arguments.
def test_plan_world_size_must_be_positive(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--config", "configs/synthetic_din.yaml", "--world-size", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err


# 6. Raw files: non-finite numbers, truncation, binary garbage, header only.
@pytest.fixture
def movielens_copy(tmp_path):
    folder = tmp_path / "ml"
    shutil.copytree(find_movielens_100k(), folder)
    return folder


@pytest.mark.parametrize("problem,content,message", [
    ("nan rating", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
     "196\t242\tnan\t881250949\n", r"ml-100k.inter:2: rating must be a finite number"),
    ("inf timestamp", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
     "196\t242\t3\tinf\n", r"ml-100k.inter:2: timestamp must be a finite number"),
    ("truncated", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
     "196\t242\t3\t881250949\n12\t203\t3\t87", r"ml-100k.inter:3: the last line has no newline"),
    ("header only", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n",
     r"ml-100k.inter:1: no data lines after the header"),
])
def test_raw_file_problems_name_file_and_line(movielens_copy, problem, content, message) -> None:
    (movielens_copy / "ml-100k.inter").write_text(content)
    with pytest.raises(DataFormatError, match=message):
        load_movielens_100k(data_dir=str(movielens_copy))


def test_binary_garbage_names_the_file(movielens_copy) -> None:
    (movielens_copy / "ml-100k.inter").write_bytes(
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t4\n\xff\xfe\x00\x81")
    with pytest.raises(DataFormatError, match=r"ml-100k.inter:3: not UTF-8 text"):
        load_movielens_100k(data_dir=str(movielens_copy))


# 7. Damaged checkpoints and caches: named, or rebuilt; temp files of dead writers removed.
def test_damaged_checkpoints_are_named_and_cache_entries_rebuilt(tmp_path, capsys) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _train(out, cache) == 0
    capsys.readouterr()
    meta = out / "last_dcp" / "meta.pt"
    meta.write_bytes(meta.read_bytes()[:1000])
    assert _train(out, cache, ["train.epochs=2"], ["--resume"]) == 1
    assert f"checkpoint {meta} is damaged" in capsys.readouterr().err
    (out / "best.pt").write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(out), "--output", str(tmp_path / "s.pt")]) == 1
    assert f"checkpoint {out / 'best.pt'} is damaged" in capsys.readouterr().err

    entry = tmp_path / "entries"
    entry.mkdir()
    table = generate_synthetic(num_users=20, num_items=30, num_cates=3, samples_per_user=3,
                               seed=0)
    cached_build(str(entry), "t", "k", lambda: table)
    (entry / "t-k.npz").write_bytes(b"PK\x03\x04 truncated")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (entry / f".tmp-{dead.pid}-abc.npz").write_bytes(b"")
    (entry / f".tmp-{os.getpid()}-mine.npz").write_bytes(b"")  # a live writer's: kept
    rebuilt, from_cache = cached_build(str(entry), "t", "k", lambda: table)
    assert not from_cache and len(rebuilt) == len(table)
    assert "is unreadable" in capsys.readouterr().out
    assert cached_build(str(entry), "t", "k", lambda: None)[1]  # the rebuilt entry loads
    assert sorted(p.name for p in entry.iterdir()) == [f".tmp-{os.getpid()}-mine.npz", "t-k.npz"]


# 8. Written files are readable by others; metrics.json is strict JSON; torchrun timeout.
def test_files_get_normal_permissions_and_strict_json(tmp_path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "f.bin"
    atomic_write(str(path), lambda f: f.write(b"x"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    atomic_write_json({"auc": float("nan"), "x": [1.0, float("inf")]}, str(tmp_path / "m.json"))
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"auc": None, "x": [1.0, None]} and "NaN" not in text


def test_frozen_rank_ends_a_torchrun_job_within_the_timeout(tmp_path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "torchrec_din", "train", "--config", "configs/synthetic_din.yaml",
           "--output-dir", str(tmp_path / "run")]
    for s in TINY + [f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=50",
                     "train.dist_timeout_s=10"]:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    # Wait for training, then freeze one worker (a child of the launcher).
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        time.sleep(0.5)
        workers = _children(proc.pid)
    time.sleep(4)  # let the workers get past start-up
    assert len(workers) == 2 and proc.poll() is None
    os.kill(workers[1], signal.SIGSTOP)
    start = time.time()
    try:
        output = proc.communicate(timeout=150)[0]
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, output[-2000:]
    elapsed = time.time() - start
    print(f"job ended {elapsed:.1f} s after a rank froze")
    assert elapsed < 150


def _children(pid: int):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return sorted(out)
