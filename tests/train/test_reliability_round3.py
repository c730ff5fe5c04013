"""Reliability, round 3: evaluation order with Parquet workers, convert never deleting a
folder it did not write, one max_history rule, --overwrite keeping the old run until the
new one is resumable, config `tables:` checked at load (one test per item, small data)."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from torchrec_din.cli import main
from torchrec_din.data.loader import _identity
from torchrec_din.metrics import evaluate_predictions

DATA = ["data.synthetic.num_users=300", "data.synthetic.num_items=200",
        "data.synthetic.num_cates=8", "data.synthetic.samples_per_user=12",
        "data.synthetic.max_length=60", "train.batch_size=64", "train.progress=false",
        "train.epochs=1", "train.checkpoint_every=0"]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    root = tmp_path_factory.mktemp("round3")
    sets = DATA + [f"data.cache_dir={root / 'cache'}"]
    assert main(["convert", "--config", "configs/synthetic_din.yaml", "--output",
                 str(root / "pq"), "--row-group-rows", "300", *_sets(sets)]) == 0
    return root


def test_parquet_metrics_with_workers_equal_file_order_scoring(parquet) -> None:
    """2 workers, many windows: the reported test metrics equal a file-order scoring of the
    same best.pt (before: workers' windows interleaved, logits met other rows' labels)."""
    from torchrec_din.serve import load_trained
    from torchrec_din.data.registry import open_source

    out = parquet / "run-workers"
    cfg = str(parquet / "pq" / "config.yaml")
    assert main(["train", "--config", cfg, "--output-dir", str(out),
                 *_sets(DATA[4:] + ["data.num_workers=2", "data.parquet.buffer_rows=128",
                                    "train.eval_batch_size=50"])]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    model, state = load_trained(str(out))
    model.eval()
    test = open_source(state["config"]).splits(
        {"train": 64, "valid": 50, "test": 50}, 0, 0, 1)["test"]
    assert len(test) > 4  # several windows and batches per worker
    with torch.no_grad():
        logits = torch.cat([model(b.sequence_features, b.pooled_features, b.dense_features)
                            for b in DataLoader(test, batch_size=None, num_workers=0,
                                                collate_fn=_identity)])
    expected = evaluate_predictions(logits, test.labels(), test.user_ids())
    for key in ("auc", "gauc", "logloss"):
        assert metrics["test"][key] == pytest.approx(expected[key], abs=1e-6), key


def test_parquet_training_applies_max_history(parquet) -> None:
    from torchrec_din.train import load_config
    from torchrec_din.data.registry import open_source

    config = load_config(str(parquet / "pq" / "config.yaml"), ["data.max_history=10"])
    longest = 0
    for b in open_source(config).splits({"train": 64, "valid": 64, "test": 64}, 0, 0,
                                             1)["train"]:
        longest = max(longest, int(b.sequence_features["hist_item"].lengths().max()))
    assert longest == 10
    raw = pq.read_table(parquet / "pq" / "train.parquet", columns=["hist_item"])
    assert max(len(v) for v in raw.column(0).to_pylist()) > 10


def test_convert_never_deletes_a_folder_it_did_not_write(parquet, tmp_path, capsys) -> None:
    sets = _sets(DATA + [f"data.cache_dir={parquet / 'cache'}"])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    args = ["convert", "--config", "configs/synthetic_din.yaml", "--output", str(theirs), *sets]
    assert main(args) == 1
    assert "is not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 1
    assert "was not written by convert" in capsys.readouterr().err
    assert (theirs / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    assert main(["convert", "--config", "configs/synthetic_din.yaml", "--output",
                 str(tmp_path / "file"), *sets]) == 1
    assert "is a file" in capsys.readouterr().err

    # Its own output is replaced with --overwrite, whole; an empty folder is fine.
    mine = tmp_path / "mine"
    mine.mkdir()
    args = ["convert", "--config", "configs/synthetic_din.yaml", "--output", str(mine), *sets]
    assert main(args) == 0
    assert sorted(os.listdir(mine)) == ["config.yaml", "test.parquet", "train.parquet",
                                        "valid.parquet"]
    assert main(args) == 1
    assert main(args + ["--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["file", "mine", "theirs"]  # no temp folders left
    cwd = os.getcwd()
    try:
        os.chdir(mine)
        assert main(["convert", "--config", os.path.join(cwd, "configs/synthetic_din.yaml"),
                     "--output", ".", "--overwrite", *sets]) == 1
        assert "holds the working directory" in capsys.readouterr().err
    finally:
        os.chdir(cwd)
    assert (mine / "train.parquet").exists()


def _snapshot(folder):
    """Every file below ``folder`` (checkpoint folders included) by relative path."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != ".lock"}


def test_failed_runs_leave_the_folder_as_they_found_it(parquet, tmp_path, capsys) -> None:
    """A bad id deep in a training file: --overwrite keeps the old run, byte for byte, and
    a fresh run leaves nothing (no config.yaml), so a retry needs no --overwrite."""
    cfg = yaml.safe_load((parquet / "pq" / "config.yaml").read_text())
    table = pq.read_table(parquet / "pq" / "train.parquet")
    item = table.column("item").to_numpy().copy()
    item[-3] = 10 ** 6
    bad = tmp_path / "bad-train.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("item"), "item",
                                    pa.array(item)), bad, row_group_size=300)
    good_cfg, bad_cfg = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good_cfg.write_text(yaml.safe_dump(cfg))
    cfg["data"]["parquet"]["train"] = [str(bad)]
    bad_cfg.write_text(yaml.safe_dump(cfg))

    out = tmp_path / "run"
    assert main(["train", "--config", str(good_cfg), "--output-dir", str(out),
                 *_sets(DATA[4:])]) == 0
    before = _snapshot(out)
    assert {"best.pt", os.path.join("last_dcp", "meta.pt"), os.path.join("best_dcp", ".metadata"),
            "metrics.json", "curves.png", "config.yaml"} <= set(before)
    assert main(["train", "--config", str(bad_cfg), "--output-dir", str(out), "--overwrite",
                 *_sets(DATA[4:])]) == 1
    assert "id 1000000 is outside table 'item'" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert sorted(os.listdir(out)) == sorted({p.split(os.sep)[0] for p in before} | {".lock"})

    fresh = tmp_path / "fresh"
    assert main(["train", "--config", str(bad_cfg), "--output-dir", str(fresh),
                 *_sets(DATA[4:])]) == 1
    assert _snapshot(fresh) == {}
    assert main(["train", "--config", str(good_cfg), "--output-dir", str(fresh),
                 *_sets(DATA[4:])]) == 0  # no --overwrite needed


def test_output_dir_that_is_a_file_is_an_error(tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("x")
    assert main(["train", "--config", "configs/synthetic_din.yaml", "--output-dir",
                 str(tmp_path / "f")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("tables.item.embedding_dim=8", "'item' is a sequence table"),
    ("tables.item.num_embedings=10", "tables.item: unknown key 'num_embedings'"),
    ("tables.itme.num_embeddings=10", "tables.itme: no table 'itme' in the feature schema"),
    ("tables.user.embedding_dim=0", "'tables.user.embedding_dim' must be >= 1"),
    ("tables.item.num_embeddings=abc", "'tables.item.num_embeddings' must be an integer"),
    ("tables.item.num_embeddings=-5", "'tables.item.num_embeddings' must be >= 1"),
    ("tables.item.num_embeddings=2.5", "'tables.item.num_embeddings' must be an integer"),
    ("tables.item=7", "tables.item must be a mapping"),
    ("tables.item.sharding_types=[diagonal]", "'tables.item.sharding_types' must be a "
                                              "non-empty list from"),
    ("tables.item.compute_kernels=3", "'tables.item.compute_kernels' must be a non-empty"),
    ("tables.item.history_mean_length=0", "'tables.item.history_mean_length' must be > 0"),
])
def test_tables_settings_are_checked_at_load(override, message) -> None:
    from torchrec_din.train import load_config

    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_config("configs/synthetic_din.yaml", [override])


def test_valid_tables_settings_load_and_apply(capsys) -> None:
    from torchrec_din.train import load_config
    from torchrec_din.build import table_configs

    config = load_config("configs/synthetic_din.yaml", [
        "tables.user.embedding_dim=4", "tables.item.num_embeddings=999",
        "tables.item.sharding_types=row_wise"])
    assert config["tables"]["item"]["sharding_types"] == ["row_wise"]
    tables = table_configs({"item": 10, "cate": 5, "user": 7, "age": 3, "gender": 2,
                            "occupation": 4}, config)
    assert [c.embedding_dim for c in tables["pooled"] if c.name == "user"] == [4]
    assert [c.num_embeddings for c in tables["sequence"] if c.name == "item"] == [999]
    assert main(["plan", "--config", "configs/synthetic_din.yaml", "--world-size", "2",
                 "--set", "tables.item.num_embeddings=abc"]) == 2
    assert "tables.item.num_embeddings" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    assert main(["train", "--config", "configs/synthetic_din.yaml", "--output-dir",
                 str(root / "run"), *_sets(DATA + [f"data.cache_dir={root / 'cache'}"])]) == 0
    return root / "run"


def _request(**change):
    req = {"id": "u1", "user": {"user": 12}, "history": {"item": [5, 9], "cate": [1, 2]},
           "candidates": {"item": [40, 41], "cate": [3, 2]}}
    req.update(change)
    return json.dumps(req)


@pytest.mark.parametrize("line,message", [
    (_request(user={"user": [12, 13]}), "line 1: user.user must be one integer id (the model "
                                        "was trained with one user per sample)"),
    (_request(user={"user": []}), "line 1: user.user must be one integer id"),
    ('{"id": NaN, "user": {"user": 1}, "history": {"item": [], "cate": []}, '
     '"candidates": {"item": [1], "cate": [1]}}', "line 1: not valid JSON"),
    (_request(id=[1]), "line 1: 'id' must be a string or an integer"),
    (_request(dense=["x"]), "line 1: dense must be a list of 0 numbers"),
])
def test_score_refuses_requests_training_never_saw(trained, tmp_path, capsys, line,
                                                   message) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text(_request() + "\n" + line + "\n")
    assert main(["score", "--checkpoint", str(trained), "--input", str(requests),
                 "--output", str(tmp_path / "scores.jsonl")]) == 1
    assert message.replace("line 1", "line 2") in capsys.readouterr().err
    assert not (tmp_path / "scores.jsonl").exists()


def test_score_and_export_files_are_checked(trained, tmp_path, capsys) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text(_request() + "\n")
    score = ["score", "--checkpoint", str(trained), "--input"]
    assert main(score + [str(requests), "--output", str(requests)]) == 1
    assert "is the --input file" in capsys.readouterr().err
    assert requests.read_text() == _request() + "\n"
    assert main(score + [str(tmp_path), "--output", str(tmp_path / "s.jsonl")]) == 1
    assert "is a folder; name a JSON Lines file" in capsys.readouterr().err
    assert main(score + [str(requests), "--output", str(tmp_path)]) == 1
    assert "is a folder; name a file" in capsys.readouterr().err
    assert main(score + [str(requests), "--output", str(tmp_path / "no" / "s.jsonl")]) == 1
    assert "cannot write into" in capsys.readouterr().err
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(_request().encode() + b"\n\xff\xfe{}\n")
    assert main(score + [str(binary), "--output", str(tmp_path / "s.jsonl")]) == 1
    assert "line 2: not UTF-8 text" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(trained), "--output", str(tmp_path)]) == 1
    assert "is a folder; name a file" in capsys.readouterr().err
    assert main(score + [str(requests), "--output", str(tmp_path / "s.jsonl")]) == 0
    assert json.loads((tmp_path / "s.jsonl").read_text())["id"] == "u1"


@pytest.mark.parametrize("text,message", [
    ("train: {epochs: 2\n", "not valid YAML"),
    ("train:\n  epochs: 2\n   batch_size: 3\n", "not valid YAML"),
    ("train:\n\tepochs: 2\n", "not valid YAML"),
])
def test_yaml_syntax_errors_are_one_line(tmp_path, capsys, text, message) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "line" in err and "Traceback" not in err
    assert main(["train", "--config", "configs/synthetic_din.yaml", "--set",
                 "train.epochs=[1", "--output-dir", str(tmp_path / "r")]) == 2
    assert "--set train.epochs=[1: the value is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("dense,message", [
    ('["x"]', "dense[0] must be a finite number, got 'x'"),
    ("[1e999]", "dense[0] must be a finite number, got inf"),
    ("[Infinity]", "not valid JSON"),
    ("[true]", "dense[0] must be a finite number, got True"),
])
def test_dense_request_values_must_be_finite_numbers(dense, message) -> None:
    from torchrec_din.serve.requests import parse_request, RequestError

    text = ('{"history": {"item": [1]}, "candidates": {"item": [2]}, "dense": %s}' % dense)
    with pytest.raises(RequestError, match="line 7: " + message.replace("[", r"\[")):
        parse_request(text, 7, ["item"], [("g", ["item"])], [], {"item": 10}, 1)
    ok = parse_request(text.replace(dense, "[0.5]"), 7, ["item"], [("g", ["item"])], [],
                       {"item": 10}, 1)
    assert ok["dense"] == [0.5]


def test_a_cache_entry_built_with_other_parameters_is_rebuilt(tmp_path, capsys) -> None:
    from torchrec_din.data.movielens import load_movielens_100k

    cache = tmp_path / "cache"
    rating = load_movielens_100k(cache_dir=str(cache), protocol="rating")
    (rating_file,) = os.listdir(cache)
    next_item = load_movielens_100k(cache_dir=str(cache), protocol="next_item")
    (next_file,) = set(os.listdir(cache)) - {rating_file}
    assert len(rating) != len(next_item)
    # A valid entry under another entry's name (copied, renamed): its header says so.
    (cache / next_file).write_bytes((cache / rating_file).read_bytes())
    capsys.readouterr()
    again = load_movielens_100k(cache_dir=str(cache), protocol="next_item")
    assert "was built with other parameters" in capsys.readouterr().out
    assert len(again) == len(next_item) and again.meta["protocol"] == "next_item"
    assert load_movielens_100k(cache_dir=str(cache), protocol="next_item").meta[
        "protocol"] == "next_item"
    assert "rebuilding" not in capsys.readouterr().out  # the rebuilt entry is used


def test_a_request_with_many_candidates_is_scored_in_parts(trained, tmp_path) -> None:
    """--max-candidates bounds one call's candidates (memory grows with them whatever the
    history); a larger request is split, and its scores are the same, in order."""
    rng = np.random.default_rng(0)
    items = rng.integers(1, 200, 2500).tolist()
    req = json.loads(_request())
    req["candidates"] = {"item": items, "cate": [i % 8 + 1 for i in items]}
    requests = tmp_path / "requests.jsonl"
    requests.write_text(_request() + "\n" + json.dumps(req) + "\n" + _request(id="u3") + "\n")
    out = {}
    for limit in ("1000", "65536"):
        path = tmp_path / f"scores-{limit}.jsonl"
        assert main(["score", "--checkpoint", str(trained), "--input", str(requests),
                     "--output", str(path), "--max-candidates", limit,
                     "--batch-users", "2"]) == 0
        out[limit] = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["id"] for x in out["1000"]] == ["u1", "u1", "u3"]
    assert len(out["1000"][1]["scores"]) == 2500
    for a, b in zip(out["1000"], out["65536"]):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-6, atol=1e-7)
