import glob

import pytest
import yaml

from torchrec_din.data.schema import FeatureSchema

from torchrec_din.config import DEFAULTS, load_config, parse_override


def test_overrides_parse_yaml_values() -> None:
    assert parse_override("train.epochs=3") == {"train": {"epochs": 3}}
    assert parse_override("data.pooled_features=[age, gender]") == {
        "data": {"pooled_features": ["age", "gender"]}}


def test_file_then_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: base\ntrain:\n  epochs: 7\n")
    cfg = load_config(str(path), ["train.epochs=2"])
    assert cfg["model"]["name"] == "base" and cfg["train"]["epochs"] == 2
    assert cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]


def test_unknown_key_is_named(tmp_path) -> None:
    with pytest.raises(KeyError, match="unknown config key 'train.epoch'"):
        load_config(None, ["train.epoch=2"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["train.epochs"])


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.yaml")))
def test_shipped_configs_load_and_spell_out_their_schema(path) -> None:
    load_config(path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    FeatureSchema.from_config(raw["features"])  # written in the file, not inherited


@pytest.mark.parametrize("override,message", [
    ("features.groups=[{name: a, candidate: [item], history: [hist_item, hist_cate]}]",
     "must pair up one to one"),
    ("features.pooled=[hist_item]", "column 'hist_item' is used twice (history and pooled)"),
    ("features.groups=[]", "features.groups must be a non-empty list"),
    ("features.groups=[{name: a, candidate: [item], history: [h], table: [x]}]",
     "unknown key(s) ['table']"),
    ("features.label=''", "features.label must be a column name"),
    ("data.pooled_features=[user]", "now 'features.pooled'"),
])
def test_schema_errors_name_the_entry(override, message) -> None:
    with pytest.raises((KeyError, ValueError)) as e:
        load_config("configs/movielens_din.yaml", [override])
    assert message in str(e.value)


def test_values_are_typed_at_load() -> None:
    cfg = load_config(None, ["train.learning_rate=1e-4", "train.epochs=3.0",
                             "train.embedding_learning_rate=5e-2"])
    assert cfg["train"]["learning_rate"] == 1e-4 and cfg["train"]["epochs"] == 3
    assert cfg["train"]["embedding_learning_rate"] == 0.05
    for item, message in [
        ("train.batch_size=abc", r"'train.batch_size' must be an integer, got 'abc'"),
        ("train.batch_size=true", r"'train.batch_size' must be an integer, got True"),
        ("train.epochs=abc", r"'train.epochs' must be an integer"),
        ("train.learning_rate=fast", r"'train.learning_rate' must be a number"),
        ("train.progress=1", r"'train.progress' must be true or false"),
        ("features.pooled=user", r"'features.pooled' must be a list"),
        ("train.epochs=0", r"'train.epochs' must be >= 1, got 0"),
        ("train.batch_size=-5", r"'train.batch_size' must be >= 1"),
        ("train.learning_rate=0", r"'train.learning_rate' must be >= "),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config(None, [item])


def test_group_histories_auto_follows_the_protocol() -> None:
    from torchrec_din.data.registry import shares_histories

    def grouped(*sets):
        return shares_histories(load_config("configs/movielens_din.yaml", list(sets))["data"])

    assert not grouped()  # rating: one sample per history
    assert grouped("data.protocol=next_item")  # a positive and its negative share a history
    assert not grouped("data.protocol=next_item", "data.group_histories=false")
    assert grouped("data.group_histories=true")
    assert not shares_histories(load_config("configs/synthetic_din.yaml")["data"])
    with pytest.raises(ValueError, match="'data.group_histories' must be one of auto, true, false"):
        load_config(None, ["data.group_histories=sometimes"])


def test_empty_file_duplicate_keys_and_unbounded_numbers_are_refused(tmp_path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"{empty} is empty"):
        load_config(str(empty))
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 2\nseed: 1\ntrain:\n  epochs: 3\n")
    with pytest.raises(ValueError, match=r"key 'train' is written twice \(lines 1 and 4\)"):
        load_config(str(twice))
    with pytest.raises(ValueError, match="'train.learning_rate' must be a finite number"):
        load_config(None, ["train.learning_rate=.inf"])
    with pytest.raises(ValueError, match="'seed' must fit in 64 bits"):
        load_config(None, [f"seed={2 ** 70}"])
    with pytest.raises(ValueError, match="'train.embedding_optimizer' must be one of"):
        load_config(None, ["train.embedding_optimizer=adamw"])


def test_a_parquet_config_without_features_is_named_and_plan_bounds_the_world(tmp_path,
                                                                               capsys) -> None:
    bare = tmp_path / "pq.yaml"
    bare.write_text("data:\n  dataset: parquet\n  parquet: {train: [a.parquet], valid: "
                    "[b.parquet], test: [c.parquet]}\n")
    with pytest.raises(ValueError, match="data.dataset is parquet but there is no features: "
                                         "section"):
        load_config(str(bare))
    from torchrec_din.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["plan", "--config", "configs/movielens_din.yaml", "--world-size", "1000000"])
    assert stop.value.code == 2
    assert "plans for at most 512 ranks, got 1000000" in capsys.readouterr().err


def test_resume_refuses_another_feature_schema() -> None:
    from torchrec_din.train.checkpoint import check_resumable

    saved = load_config("configs/synthetic_din.yaml")
    changed = load_config("configs/synthetic_din.yaml", ["features.pooled=[]"])
    with pytest.raises(ValueError, match="--resume needs the same 'features' config"):
        check_resumable(saved, changed)
