import pytest

from torchrec_din.train.config import DEFAULTS, load_config, parse_override


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


@pytest.mark.parametrize("name", ["movielens_din", "movielens_din_dice", "movielens_base",
                                  "synthetic_din"])
def test_shipped_configs_load(name) -> None:
    load_config(f"configs/{name}.yaml")
