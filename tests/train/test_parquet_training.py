"""Training from Parquet: the converter's files train to the built-in loader's metrics, the
same model scores both identically, and a killed streaming run resumes exactly."""

import json
import signal
import sys

import pytest
import yaml

from torchrec_din.cli import main
from torchrec_din.io import load_checkpoint

DATA = ["data.synthetic.num_users=600", "data.synthetic.num_items=400",
        "data.synthetic.num_cates=10", "data.synthetic.samples_per_user=20",
        "data.synthetic.max_length=40", "train.batch_size=128", "train.progress=false",
        "train.learning_rate=0.01"]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def test_movielens_converted_trains_to_the_builtin_metrics(tmp_path) -> None:
    """The main job's data through convert + Parquet streaming: same samples, and after 3
    epochs the same test metrics within the order-to-order spread (see the tolerance)."""
    sets = [f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=3", "train.progress=false"]
    assert main(["convert", "--config", "configs/movielens_din.yaml", "--output",
                 str(tmp_path / "pq"), *_sets(sets)]) == 0
    assert main(["train", "--config", "configs/movielens_din.yaml", "--output-dir",
                 str(tmp_path / "builtin"), *_sets(sets)]) == 0
    assert main(["train", "--config", str(tmp_path / "pq" / "config.yaml"), "--output-dir",
                 str(tmp_path / "parquet"), *_sets(sets[1:])]) == 0
    builtin = json.loads((tmp_path / "builtin" / "metrics.json").read_text())
    parquet = json.loads((tmp_path / "parquet" / "metrics.json").read_text())
    print({k: (builtin["test"][k], parquet["test"][k]) for k in ("auc", "gauc", "logloss")})
    for split in ("train", "valid", "test"):
        assert parquet["data"]["summary"][split]["samples"] == \
            builtin["data"]["summary"][split]["samples"]
    for key in ("auc", "gauc"):
        assert parquet["test"][key] == pytest.approx(builtin["test"][key], abs=0.01), key
    assert parquet["baselines"]["popularity"] == pytest.approx(builtin["baselines"]["popularity"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    sets = DATA + [f"data.cache_dir={root / 'cache'}"]
    assert main(["convert", "--config", "configs/synthetic_din.yaml", "--output",
                 str(root / "pq"), "--row-group-rows", "1000", *_sets(sets)]) == 0
    return root, sets


def test_converted_files_score_exactly_like_the_builtin_loader(converted) -> None:
    root, sets = converted
    cfg = yaml.safe_load((root / "pq" / "config.yaml").read_text())
    assert cfg["data"]["dataset"] == "parquet" and cfg["tables"]["item"]["num_embeddings"] >= 400
    # The planner works from the Parquet config alone (sizes from tables.*, files' metadata).
    assert main(["plan", "--config", str(root / "pq" / "config.yaml"), "--world-size", "2",
                 "--compute-device", "cpu"]) == 0
    assert main(["convert", "--config", str(root / "pq" / "config.yaml"), "--output",
                 str(root / "again")]) == 2  # already Parquet
    epochs = ["train.epochs=2"]
    assert main(["train", "--config", "configs/synthetic_din.yaml", "--output-dir",
                 str(root / "builtin"), *_sets(sets + epochs)]) == 0
    assert main(["train", "--config", str(root / "pq" / "config.yaml"), "--output-dir",
                 str(root / "parquet"), *_sets(["train.progress=false", *epochs])]) == 0
    builtin = json.loads((root / "builtin" / "metrics.json").read_text())
    parquet = json.loads((root / "parquet" / "metrics.json").read_text())
    for split in ("train", "valid", "test"):
        assert parquet["data"]["summary"][split]["samples"] == \
            builtin["data"]["summary"][split]["samples"]
    assert parquet["test"]["samples"] == builtin["test"]["samples"]
    assert parquet["baselines"]["popularity"]["auc"] == pytest.approx(
        builtin["baselines"]["popularity"]["auc"], abs=1e-9)

    # The built-in run's best model scores the Parquet test split exactly as it scored its own.
    import torch

    from torchrec_din.data.parquet import ParquetSource
    from torchrec_din.data.schema import FeatureSchema
    from torchrec_din.metrics import evaluate_predictions
    from torchrec_din.serve import load_trained
    from torchrec_din.train.predict import predict

    model, _ = load_trained(str(root / "builtin"))
    source = ParquetSource(cfg["data"], FeatureSchema.from_config(cfg["features"]),
                           {t: v["num_embeddings"] for t, v in cfg["tables"].items()})
    test = source.splits({"train": 128, "valid": 256, "test": 256}, 0, 0, 1)["test"]
    logits, labels, _ = predict(model, torch.utils.data.DataLoader(
        test, batch_size=None, collate_fn=lambda b: b))
    scored = evaluate_predictions(torch.as_tensor(logits), labels, test.user_ids())
    assert scored["auc"] == pytest.approx(builtin["test"]["auc"], abs=1e-6)
    assert scored["gauc"] == pytest.approx(builtin["test"]["gauc"], abs=1e-6)


def test_streaming_run_killed_mid_epoch_resumes_exactly(converted, sigterm_once_written) -> None:
    root, _ = converted
    config = str(root / "pq" / "config.yaml")
    sets = ["train.progress=false", "train.epochs=2", "train.checkpoint_every=5",
            "data.num_workers=2", "data.parquet.buffer_rows=512", "model.dropout=0.2"]
    assert main(["train", "--config", config, "--output-dir", str(root / "full"),
                 *_sets(sets)]) == 0
    full = json.loads((root / "full" / "metrics.json").read_text())

    out = root / "killed"
    last = out / "last_dcp" / "meta.pt"
    code, output = sigterm_once_written([sys.executable, "-m", "torchrec_din", "train",
                                         "--config", config, "--output-dir", str(out),
                                         *_sets(sets)], last)
    assert code == 128 + signal.SIGTERM, output
    saved = load_checkpoint(str(last))
    assert saved["batch"] > 0, "stopped mid-epoch"

    assert main(["train", "--config", config, "--output-dir", str(out), "--resume",
                 *_sets(sets)]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in full["epochs"]]
    for key in ("auc", "gauc", "logloss"):
        assert resumed["test"][key] == full["test"][key], key


def test_resume_refuses_data_files_that_changed(converted, tmp_path, capsys) -> None:
    """A run records the size and modification time of every file it reads; --resume over a
    rewritten train file is refused by name (its position counts the old file's rows)."""
    import shutil

    import pyarrow.parquet as pq

    root, _ = converted
    cfg = yaml.safe_load((root / "pq" / "config.yaml").read_text())
    for split in ("train", "valid", "test"):
        (src,) = cfg["data"]["parquet"][split]
        shutil.copy(src, tmp_path / f"{split}.parquet")
        cfg["data"]["parquet"][split] = [str(tmp_path / f"{split}.parquet")]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--output-dir", str(out)]
    assert main(args + _sets(["train.epochs=1", "train.progress=false"])) == 0
    capsys.readouterr()
    train = tmp_path / "train.parquet"
    table = pq.read_table(train)
    pq.write_table(table.slice(0, table.num_rows - 10), train)  # rewritten, 10 rows fewer
    assert main(args + _sets(["train.epochs=2", "train.progress=false"]) + ["--resume"]) == 1
    err = capsys.readouterr().err
    assert f"--resume: {train} changed since the checkpoint" in err, err
    assert "would train rows twice or skip them" in err
