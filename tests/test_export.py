"""Whole-model torch.export (batch, history lengths and candidates per user dynamic): DIN,
BaseModel, a user's own ranker holding DINInteraction and the grouped scorer export, save,
load and equal eager on batches of other sizes, empty histories included."""

import pytest
import torch

from torchrec_din.export import dynamic_shapes, export_model, load_program, save_program
from torchrec_din.models import BaseModel, DIN
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections

from conftest import load_example  # tests/conftest.py

OTHER_BATCHES = [[2, 9, 0, 4], [0, 0, 0], list(range(40)), [1] * 64, [5], [0]]


def _inputs(batch):
    return batch.sequence_features, batch.pooled_features, batch.dense_features


def _roundtrip(ep, tmp_path):
    path = str(tmp_path / "model.pt2")
    save_program(ep, path)
    return load_program(path).module()


@pytest.mark.parametrize("name,validate", [("din", False), ("din", True), ("base", False)])
def test_whole_model_exports_and_equals_eager(tmp_path, name, validate) -> None:
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    if name == "din":
        model = DIN(ec, TOY_GROUPS, ebc, dense_in_features=2, attention_activation="dice",
                    attention_normalization="softmax", use_outer_product=True,
                    validate_inputs=validate)
    else:
        model = BaseModel(ec, TOY_GROUPS, ebc, dense_in_features=2, validate_inputs=validate)
    model.eval()
    ep = export_model(model, _inputs(toy_batch([3, 0, 5, 1, 7, 2])))
    loaded = _roundtrip(ep, tmp_path)
    with torch.no_grad():
        for i, lengths in enumerate(OTHER_BATCHES):
            batch = toy_batch(lengths, seed=i + 1)
            torch.testing.assert_close(loaded(*_inputs(batch)), model(*_inputs(batch)),
                                       rtol=0, atol=0)


def test_exported_shape_checks_still_refuse_bad_batches() -> None:
    """torch._check turns the always-on shape checks into runtime asserts of the program."""
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    model = DIN(ec, TOY_GROUPS, ebc, dense_in_features=2, validate_inputs=False).eval()
    program = export_model(model, _inputs(toy_batch([3, 0, 5, 1]))).module()
    batch = toy_batch([2, 2, 2])
    with pytest.raises(Exception):
        program(batch.sequence_features, batch.pooled_features, batch.dense_features[:2])
    with pytest.raises(ValueError, match="dense_features has 2 rows but the sparse features "
                                         "hold 3 samples"):
        model(batch.sequence_features, batch.pooled_features, batch.dense_features[:2])


def test_dynamic_shapes_marks_every_kjt_leaf() -> None:
    batch = toy_batch([1, 2])
    spec = dynamic_shapes(_inputs(batch) + ([torch.zeros(3, 2)],))
    auto = {0: torch.export.Dim.AUTO}
    assert spec[0] == [auto, None, auto, None, None, None]  # values, weights, lengths, ...
    assert spec[2] == auto and spec[3] == [auto]


def test_users_own_ranker_exports(tmp_path) -> None:
    example = load_example("your_own_model")
    torch.manual_seed(0)
    scorer = example.Scorer(example.MyRanker()).eval()
    g = torch.Generator().manual_seed(1)
    loaded = _roundtrip(export_model(scorer, _inputs(example.make_batch(37, g))), tmp_path)
    with torch.no_grad():
        for size in (64, 1, 500):
            batch = example.make_batch(size, g)
            torch.testing.assert_close(loaded(*_inputs(batch)), scorer(*_inputs(batch)),
                                       rtol=0, atol=0)


def test_loading_a_damaged_or_foreign_file_names_it(tmp_path) -> None:
    bad = tmp_path / "scorer.pt2"
    bad.write_bytes(b"not a program")
    with pytest.raises(ValueError, match="scorer.pt2 is not a torch.export program"):
        load_program(str(bad))
    torch.save({"a": 1}, bad)
    with pytest.raises(ValueError, match="scorer.pt2 is not a torch.export program"):
        load_program(str(bad))
    with pytest.raises(ValueError, match="nope.pt2: no such file"):
        load_program(str(tmp_path / "nope.pt2"))


def _scorer_request(users, seed=0):
    """A request for a one-group scorer (item, cate; pooled user, age): per user a history
    length and a candidate count."""
    from torchrec_din.serve.scorer import pooled_kjt

    g = torch.Generator().manual_seed(seed)
    hist = torch.tensor([h for h, _ in users], dtype=torch.long)
    counts = torch.tensor([k for _, k in users], dtype=torch.long)
    n, k = int(hist.sum()), int(counts.sum())
    ids = torch.stack([torch.randint(0, 60, (n,), generator=g),
                       torch.randint(0, 9, (n,), generator=g)], 1)
    cands = torch.stack([torch.randint(0, 60, (k,), generator=g),
                         torch.randint(0, 9, (k,), generator=g)], 1)
    pooled = pooled_kjt(["user", "age"], torch.stack(
        [torch.randint(0, 30, (len(users),), generator=g),
         torch.randint(0, 5, (len(users),), generator=g)], 1))
    return ([ids], [hist], cands, counts, pooled, torch.zeros(len(users), 0))


@pytest.mark.parametrize("max_history", [0, 3])
def test_grouped_scorer_exports_with_candidates_per_user_dynamic(tmp_path, max_history) -> None:
    from torchrec_din.serve import DINScorer
    from torchrec_din.build import build_model
    from torchrec_din.config import load_config

    config = load_config(None, ["features.pooled=[user, age]", "model.embedding_dim=8",
                                "model.attention_activation=dice",
                                "model.pooled_embedding_dim=4"])
    torch.manual_seed(0)
    model = build_model({"item": 60, "cate": 9, "user": 30, "age": 5}, config).eval()
    scorer = DINScorer(model, max_history).eval()
    program = _roundtrip(export_model(scorer, _scorer_request([(3, 2), (0, 4), (7, 1)])),
                         tmp_path)
    with torch.no_grad():
        for i, users in enumerate([[(5, 100)], [(0, 1), (0, 2)], [(40, 3)] * 20,
                                   [(1, 1), (9, 7), (0, 5), (2, 2)]]):
            request = _scorer_request(users, seed=i + 1)
            torch.testing.assert_close(program(*request), scorer(*request), rtol=0, atol=0)
