import io
import json

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.cli import main
from torchrec_din.serve import DINScorer, export_scorer, load_trained
from torchrec_din.serve.export import script_scorer
from torchrec_din.serve.requests import parse_request, RequestError, to_tensors
from torchrec_din.build import build_model
from torchrec_din.io import atomic_save
from torchrec_din.config import load_config

VOCAB = {"item": 60, "cate": 9, "user": 30, "age": 5}
POOLED = ["user", "age"]
# (history items, history cates, candidate items, candidate cates, user, age) per user
USERS = [
    ([5, 9, 31], [2, 2, 7], [40, 41, 5], [3, 2, 2], 12, 3),
    ([], [], [7, 8], [1, 1], 3, 0),
    ([1], [4], [2], [4], 29, 4),
    (list(range(10, 50)), [i % 9 for i in range(40)], [11, 12, 13, 59], [2, 3, 4, 8], 0, 1),
]


def _model(*sets, **overrides):
    sets = list(sets) + ["features.pooled=[user, age]", "model.embedding_dim=8",
                         "model.pooled_embedding_dim=4"] + [
        f"model.{k}={v}" for k, v in overrides.items()]
    config = load_config(None, sets)
    torch.manual_seed(0)
    model = build_model(VOCAB, config)
    # move Dice running statistics away from their initial values
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.uniform_(0.5, 1.5)
    return model.eval(), config


def _score_rows(model, keys, rows, pooled_keys=("user", "age")):
    """The training model on independent rows: ``rows`` holds, per row, one id list per key
    of ``keys`` and one per pooled key."""
    values, lengths = [[] for _ in keys], [[] for _ in keys]
    pooled_values, pooled_lengths = [[] for _ in pooled_keys], [[] for _ in pooled_keys]
    for lists, pooled_lists in rows:
        for k, vals in enumerate(lists):
            values[k] += vals
            lengths[k].append(len(vals))
        for k, vals in enumerate(pooled_lists):
            pooled_values[k] += vals
            pooled_lengths[k].append(len(vals))
    kjt = KeyedJaggedTensor(keys=keys, values=torch.tensor(sum(values, []), dtype=torch.long),
                            lengths=torch.tensor(sum(lengths, []), dtype=torch.long))
    pooled_kjt = KeyedJaggedTensor(
        keys=list(pooled_keys), values=torch.tensor(sum(pooled_values, []), dtype=torch.long),
        lengths=torch.tensor(sum(pooled_lengths, []), dtype=torch.long))
    return model(kjt, pooled_kjt, torch.zeros(len(rows), 0))


def _row_by_row(model):
    """Each (user, candidate) as an independent row of the training model."""
    return _score_rows(model, ["item", "cate", "hist_item", "hist_cate"],
                       [([[item], [cate], hi, hc], ([u], [a])) for hi, hc, ci, cc, u, a in USERS
                        for item, cate in zip(ci, cc)])


def _requests():
    return [{"id": i, "history": [[hi, hc]], "candidates": [ci, cc], "pooled": [[u], [a]],
             "dense": []} for i, (hi, hc, ci, cc, u, a) in enumerate(USERS)]


@pytest.mark.parametrize("overrides", [
    {},
    {"attention_activation": "dice", "attention_normalization": "softmax",
     "over_arch_activation": "dice"},
    {"attention_activation": "prelu", "use_outer_product": "true"},
    {"attention_activation": "relu", "attention_normalization": "softmax",
     "use_outer_product": "true", "embedding_dim": 16},  # D = 32: the bilinear outer path
    {"name": "base"},
])
def test_multi_candidate_equals_row_by_row_and_script(overrides) -> None:
    model, _ = _model(**overrides)
    expected = _row_by_row(model)
    scorer = DINScorer(model).eval()
    inputs = to_tensors(_requests(), POOLED)
    torch.testing.assert_close(scorer(*inputs), expected, rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(scorer)
    torch.testing.assert_close(scripted(*inputs), expected, rtol=1e-5, atol=1e-5)


def test_export_roundtrip_and_score_cli(tmp_path) -> None:
    model, config = _model(attention_activation="dice")
    run = tmp_path / "run"
    atomic_save({"model": model.state_dict(), "config": config, "vocab": VOCAB, "epoch": 0},
                str(run / "best.pt"))
    loaded, _ = load_trained(str(run))
    expected = _row_by_row(model)
    path = str(tmp_path / "scorer.pt")
    export_scorer(loaded, path)
    torch.testing.assert_close(torch.jit.load(path)(*to_tensors(_requests(), POOLED)), expected,
                               rtol=1e-5, atol=1e-5)

    int8_path = tmp_path / "scorer_int8.pt"
    assert main(["export", "--checkpoint", str(run), "--output", str(int8_path), "--int8"]) == 0
    torch.testing.assert_close(torch.jit.load(str(int8_path))(*to_tensors(_requests(), POOLED)),
                               expected, rtol=0, atol=0.05)

    requests = tmp_path / "requests.jsonl"
    with open(requests, "w") as f:
        for i, (hi, hc, ci, cc, u, a) in enumerate(USERS):
            f.write(json.dumps({"id": f"u{i}", "user": {"user": u, "age": a},
                                "history": {"item": hi, "cate": hc},
                                "candidates": {"item": ci, "cate": cc}}) + "\n")
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--checkpoint", str(run), "--input", str(requests),
                 "--output", str(out), "--batch-users", "3"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["u0", "u1", "u2", "u3"]
    scores = torch.tensor(sum((x["scores"] for x in lines), []))
    torch.testing.assert_close(scores, torch.sigmoid(expected), rtol=1e-5, atol=1e-6)


ROWS = {"item": 60, "cate": 9, "user": 30, "age": 5}


@pytest.mark.parametrize("text,message", [
    ("{not json", "line 7: not valid JSON"),
    ('{"history": {"item": [1], "cate": [1]}}', "line 7: missing object 'candidates'"),
    ('{"user": {"user": 1, "age": 1}, "history": {"item": [1, 2], "cate": [1]}, '
     '"candidates": {"item": [3], "cate": [1]}}', r"history lists \['item', 'cate'\] differ"),
    ('{"user": {"user": 1, "age": 1}, "history": {"item": [1], "cate": [1]}, '
     '"candidates": {"item": [60], "cate": [1]}}', r"candidates.item id 60 out of range \[0, 60\)"),
    ('{"user": {"user": 1}, "history": {"item": [1], "cate": [1]}, '
     '"candidates": {"item": [3], "cate": [1]}}', "user.age must be an integer id"),
    ('{"user": {"user": 1, "age": 1}, "history": {"item": [1], "cate": [1]}, '
     '"candidates": {"item": [], "cate": []}}', "line 7: no candidates"),
])
def test_malformed_requests_name_the_line(text, message) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request(text, 7, ["item", "cate"], [("din", ["item", "cate"])], ["user", "age"],
                      ROWS, 0)


def test_score_cli_reports_bad_line(tmp_path, capsys) -> None:
    model, config = _model()
    run = tmp_path / "run"
    atomic_save({"model": model.state_dict(), "config": config, "vocab": VOCAB, "epoch": 0},
                str(run / "best.pt"))
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"user": {"user": 1, "age": 1}, "history": {"item": [1], "cate": [1]}, '
                        '"candidates": {"item": [3], "cate": [1]}}\n{oops\n')
    assert main(["score", "--checkpoint", str(run), "--input", str(requests),
                 "--output", str(tmp_path / "s.jsonl")]) == 1
    assert "line 2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize("overrides", [{"attention_activation": "dice"}, {"name": "base"}])
def test_int8_scorer_scripts_and_equals_eager_int8(overrides) -> None:
    import copy

    from torchrec.inference.modules import quantize_inference_model

    model, _ = _model(**overrides)
    int8 = quantize_inference_model(copy.deepcopy(model))
    expected = _row_by_row(int8)  # the quantized model scoring each (user, candidate) row
    inputs = to_tensors(_requests(), POOLED)
    torch.testing.assert_close(DINScorer(int8).eval()(*inputs), expected, rtol=1e-5, atol=1e-5)
    buffer = io.BytesIO()
    torch.jit.save(script_scorer(model, int8=True), buffer)
    buffer.seek(0)
    scripted = torch.jit.load(buffer)
    torch.testing.assert_close(scripted(*inputs), expected, rtol=1e-5, atol=1e-5)
    # int8 rows stay close to the fp32 model.
    torch.testing.assert_close(expected, _row_by_row(model), rtol=0, atol=0.05)


TWO_GROUPS = ("features.groups=[{name: clicks, candidate: [item, cate], history: [click_item, "
              "click_cate]}, {name: buys, candidate: [item], history: [buy_item]}]")
# (clicked items, clicked cates, bought items, candidate items, candidate cates, user, age)
TWO_GROUP_USERS = [
    ([5, 9, 31], [2, 2, 7], [9], [40, 41, 5], [3, 2, 2], 12, 3),
    ([], [], [3, 4], [7, 8], [1, 1], 3, 0),
    ([1], [4], [], [2], [4], 29, 4),
    (list(range(10, 30)), [i % 9 for i in range(20)], [11, 12, 13], [11, 59], [2, 8], 0, 1),
]


def _two_group_model(**overrides):
    return _model(TWO_GROUPS, **overrides)


def _two_group_rows(model, max_history=0):
    """Each (user, candidate) as an independent row, each history cut to its newest
    ``max_history`` (0: all) by hand."""
    def cut(x):
        return x[-max_history:] if max_history else x

    return _score_rows(model, ["item", "cate", "click_item", "click_cate", "buy_item"],
                       [([[item], [cate], cut(hi), cut(hc), cut(bi)], ([u], [a]))
                        for hi, hc, bi, ci, cc, u, a in TWO_GROUP_USERS
                        for item, cate in zip(ci, cc)])


def _two_group_lines():
    return [json.dumps({"id": f"u{i}", "user": {"user": u, "age": a},
                        "history": {"clicks": {"item": hi, "cate": hc}, "buys": {"item": bi}},
                        "candidates": {"item": ci, "cate": cc}})
            for i, (hi, hc, bi, ci, cc, u, a) in enumerate(TWO_GROUP_USERS)]


@pytest.mark.parametrize("overrides", [
    {"attention_activation": "dice", "attention_normalization": "softmax"},
    {"attention_activation": "prelu", "use_outer_product": "true"},
])
def test_two_groups_score_as_row_by_row_eager_scripted_and_int8(overrides) -> None:
    import copy

    from torchrec.inference.modules import quantize_inference_model

    model, _ = _two_group_model(**overrides)
    scorer = DINScorer(model).eval()
    assert scorer.features == ["item", "cate"]
    assert scorer.history_features == [["click_item", "click_cate"], ["buy_item"]]
    groups = list(zip(scorer.group_names, scorer.group_features))
    requests = [parse_request(text, i + 1, scorer.features, groups, ["user", "age"], ROWS, 0)
                for i, text in enumerate(_two_group_lines())]
    inputs = to_tensors(requests, POOLED)
    expected = _two_group_rows(model)
    torch.testing.assert_close(scorer(*inputs), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.jit.script(scorer)(*inputs), expected, rtol=1e-5,
                               atol=1e-5)
    # The newest 2 behaviours of each group, as training's data.max_history would keep.
    torch.testing.assert_close(DINScorer(model, max_history=2).eval()(*inputs),
                               _two_group_rows(model, max_history=2), rtol=1e-5, atol=1e-5)
    int8_expected = _two_group_rows(quantize_inference_model(copy.deepcopy(model)))
    buffer = io.BytesIO()
    torch.jit.save(script_scorer(model, int8=True), buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(*inputs), int8_expected, rtol=1e-5,
                               atol=1e-5)
    # A list per group is required; one tensor short is an error that says what is expected.
    with pytest.raises(Exception, match="one history_ids and one history_lengths tensor per"):
        scorer(inputs[0][:1], inputs[1][:1], *inputs[2:])


def test_two_group_score_cli_and_its_request_errors(tmp_path) -> None:
    model, config = _two_group_model(attention_activation="dice")
    run = tmp_path / "run"
    atomic_save({"model": model.state_dict(), "config": config, "vocab": VOCAB, "epoch": 0},
                str(run / "best.pt"))
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(_two_group_lines()) + "\n")
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--checkpoint", str(run), "--input", str(requests),
                 "--output", str(out), "--batch-users", "3", "--max-history", "0"]) == 0
    scores = torch.tensor(sum((json.loads(x)["scores"] for x in out.read_text().splitlines()),
                              []))
    torch.testing.assert_close(scores, torch.sigmoid(_two_group_rows(model)), rtol=1e-5,
                               atol=1e-6)
    groups = [("clicks", ["item", "cate"]), ("buys", ["item"])]
    flat = ('{"user": {"user": 1, "age": 1}, "history": {"item": [1], "cate": [1]}, '
            '"candidates": {"item": [3], "cate": [1]}}')
    with pytest.raises(RequestError, match=r"line 4: missing object 'history' with one object "
                                           r"per attention group \['clicks', 'buys'\]"):
        parse_request(flat, 4, ["item", "cate"], groups, ["user", "age"], ROWS, 0)
    bad = ('{"user": {"user": 1, "age": 1}, "history": {"clicks": {"item": [1], "cate": [1]}, '
           '"buys": {"item": [60]}}, "candidates": {"item": [3], "cate": [1]}}')
    with pytest.raises(RequestError, match=r"history.buys.item id 60 out of range"):
        parse_request(bad, 4, ["item", "cate"], groups, ["user", "age"], ROWS, 0)


def test_multi_hot_pooled_feature_serves_as_it_trains(tmp_path) -> None:
    """A pooled feature with a list of ids per user (tags): the request's list reaches the
    model's EmbeddingBagCollection as one jagged row, equal to the model's own scoring."""
    vocab = dict(VOCAB, tags=12)
    config = load_config(None, ["features.pooled=[user, tags]", "model.embedding_dim=8",
                                "model.pooled_embedding_dim=4"])
    torch.manual_seed(0)
    model = build_model(vocab, config).eval()
    tags = [[1, 5, 7], [], [11], [0, 0]]
    users = [(hi, hc, ci, cc, u, t) for (hi, hc, ci, cc, u, _), t in zip(USERS, tags)]
    lines = [json.dumps({"id": i, "user": {"user": u, "tags": t},
                         "history": {"item": hi, "cate": hc},
                         "candidates": {"item": ci, "cate": cc}})
             for i, (hi, hc, ci, cc, u, t) in enumerate(users)]
    scorer = DINScorer(model).eval()
    rows = {**model.sequence_rows, **model.pooled_rows}
    groups = list(zip(scorer.group_names, scorer.group_features))
    requests = [parse_request(x, i + 1, scorer.features, groups, scorer.pooled_features, rows, 0)
                for i, x in enumerate(lines)]
    got = torch.jit.script(scorer)(*to_tensors(requests, scorer.pooled_features))
    # The model itself, one row per (user, candidate), tags as a jagged pooled feature.
    expected = _score_rows(model, ["item", "cate", "hist_item", "hist_cate"],
                           [([[item], [cate], hi, hc], ([u], t)) for hi, hc, ci, cc, u, t in users
                            for item, cate in zip(ci, cc)], pooled_keys=("user", "tags"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Tags matter: dropping them changes the scores.
    requests[0]["pooled"][1] = []
    assert not torch.allclose(scorer(*to_tensors(requests, scorer.pooled_features))[:3],
                              expected[:3])
    with pytest.raises(RequestError, match=r"line 2: user.tags id 12 out of range \[0, 12\)"):
        parse_request(lines[0].replace("[1, 5, 7]", "[1, 12]"), 2, scorer.features, groups,
                      scorer.pooled_features, rows, 0)


def test_aoti_package_serves_the_eager_scores(tmp_path, capsys) -> None:
    """export (default: an AOTInductor package of the whole grouped scorer) then
    `score --model`: the same request format and checks, the eager model's scores within
    1e-5, the history cap baked in; damaged or foreign packages are named."""
    model, config = _two_group_model(attention_activation="dice",
                                     attention_normalization="softmax")
    config["data"]["max_history"] = 2
    run = tmp_path / "run"
    atomic_save({"model": model.state_dict(), "config": config, "vocab": VOCAB, "epoch": 0,
                 "serving": {"pooled_multi_hot": []}}, str(run / "best.pt"))
    package = tmp_path / "scorer.pt2"
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(_two_group_lines()) + "\n")
    out = {}
    import warnings

    from torchrec_din.testing.deprecations import deprecations_of_ours

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", "--checkpoint", str(run), "--output", str(package)]) == 0
        for source, users in ((["--model", str(package)], "3"),
                              (["--model", str(package)], "1"),
                              (["--checkpoint", str(run)], "3")):
            path = tmp_path / f"scores{len(out)}.jsonl"
            assert main(["score", *source, "--input", str(requests), "--output", str(path),
                         "--batch-users", users]) == 0  # calls of 3 + 1 users, and of 1 user
            out[source[0] + users] = torch.tensor(sum(
                (json.loads(x)["scores"] for x in path.read_text().splitlines()), []))
    assert deprecations_of_ours(caught) == []  # the default path prints none of ours
    assert "AOTInductor scorer package" in capsys.readouterr().out
    expected = torch.sigmoid(_two_group_rows(model, max_history=2))
    torch.testing.assert_close(out["--checkpoint3"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["--model3"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["--model1"], expected, rtol=1e-5, atol=1e-5)

    # The package's request checks are the model's: a list for a single-hot feature.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_two_group_lines()[0].replace('"user": 12', '"user": [12, 1]') + "\n")
    assert main(["score", "--model", str(package), "--input", str(bad), "--output",
                 str(tmp_path / "s.jsonl")]) == 1
    assert "line 1: user.user must be one integer id" in capsys.readouterr().err
    assert main(["score", "--model", str(package), "--input", str(requests), "--output",
                 str(tmp_path / "s.jsonl"), "--max-history", "5"]) == 2
    assert "keeps the newest 2 behaviours (fixed when it was exported)" in \
        capsys.readouterr().err
    for name, content in (("junk.pt2", b"junk"), ("other.pt2", None)):
        path = tmp_path / name
        if content is None:
            torch.save({"a": 1}, path)  # a zip, but not a scorer package
        else:
            path.write_bytes(content)
        assert main(["score", "--model", str(path), "--input", str(requests), "--output",
                     str(tmp_path / "s.jsonl")]) == 1
        assert f"--model {path} is not a scorer package" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(run), "--output", str(package), "--int8",
                 "--format", "aoti"]) == 2
    assert "--int8 exports TorchScript only" in capsys.readouterr().err
