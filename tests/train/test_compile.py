"""Compiled training (`train.compile`): the dense part under torch.compile with dynamic
shapes trains as eager does on ragged batches, without recompiling per batch shape."""

import copy

import torch
from torch._dynamo.utils import counters

from torchrec_din import DIN, DINTrain
from torchrec_din.models import compile_dense
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections

STEPS = 20


def _batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for step in range(STEPS):
        b = int(torch.randint(3, 12, (1,), generator=g))
        lengths = torch.randint(0, 9, (b,), generator=g).tolist()
        lengths[0] = 0  # an empty history in every batch
        out.append(toy_batch(lengths, seed=step))
    return out


def _train(model, batches):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for batch in batches:
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_compiled_dense_part_trains_like_eager() -> None:
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    eager = DIN(ec, TOY_GROUPS, ebc, dense_in_features=2, attention_activation="dice",
                attention_normalization="softmax", over_arch_activation="dice",
                validate_inputs=False)
    compiled = copy.deepcopy(eager)
    compile_dense(compiled)
    batches = _batches()
    torch._dynamo.reset()
    counters.clear()
    expected = _train(DINTrain(eager), batches)
    got = _train(DINTrain(compiled), batches)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5,
                               atol=1e-5)
    # Batch sizes 3..11 and history totals vary every step: dynamic shapes keep it to the
    # first graphs (forward of the interaction and of the over arch), not one per shape.
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    assert set(compiled.state_dict()) == set(eager.state_dict())  # checkpoints unchanged


def test_train_compile_from_the_cli(tmp_path, capsys) -> None:
    import json

    from torchrec_din.cli import main

    sets = ["data.synthetic.num_users=150", "data.synthetic.num_items=80",
            "data.synthetic.samples_per_user=6", "data.synthetic.max_length=15",
            "train.epochs=1", "train.progress=false", "train.batch_size=64",
            f"data.cache_dir={tmp_path / 'cache'}"]
    runs = {}
    for compiled in ("false", "true"):
        out = tmp_path / f"run-{compiled}"
        args = ["train", "--config", "configs/synthetic_din.yaml", "--output-dir", str(out)]
        assert main(args + [a for s in sets + [f"train.compile={compiled}"]
                            for a in ("--set", s)]) == 0
        runs[compiled] = json.loads((out / "metrics.json").read_text())
    printed = capsys.readouterr().out
    assert "[compile] first step" in printed and "graphs compiled so far" in printed
    loss = [runs[c]["epochs"][0]["train_loss"] for c in ("false", "true")]
    assert abs(loss[0] - loss[1]) < 1e-4, loss


def test_a_resumed_compiled_run_matches_the_uninterrupted_one(tmp_path) -> None:
    import json

    from torchrec_din.cli import main

    sets = ["data.synthetic.num_users=150", "data.synthetic.num_items=80",
            "data.synthetic.samples_per_user=6", "data.synthetic.max_length=15",
            "train.progress=false", "train.batch_size=64", "train.compile=true",
            f"data.cache_dir={tmp_path / 'cache'}"]

    def train(out, epochs, *flags):
        args = ["train", "--config", "configs/synthetic_din.yaml", "--output-dir", str(out)]
        assert main(args + [a for s in sets + [f"train.epochs={epochs}"]
                            for a in ("--set", s)] + list(flags)) == 0
        return json.loads((out / "metrics.json").read_text())

    full = train(tmp_path / "full", 2)
    train(tmp_path / "part", 1)
    resumed = train(tmp_path / "part", 2, "--resume")
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"]
                                                            for e in full["epochs"]]
    assert resumed["test"]["auc"] == full["test"]["auc"]
