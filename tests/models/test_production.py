"""DIN and BaseModel on the production path: scripted, fx-traced + scripted, int8-quantized
(TorchRec's inference recipe) and saved/loaded, equal to eager; no host sync with checks off."""

import copy
import io

import pytest
import torch
from torchrec.fx import symbolic_trace
from torchrec.inference.modules import quantize_inference_model

from torchrec_din import BaseModel, DIN, DINTrain
from torchrec_din.testing.sync import SyncCounter
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections


LENGTHS = [[3, 0, 1, 12, 2, 0], [0, 0, 5, 1]]


def _model(name: str, validate: bool = True):
    torch.manual_seed(0)
    ec, ebc = toy_collections()
    if name == "base":
        model = BaseModel(ec, TOY_GROUPS, ebc, dense_in_features=2, validate_inputs=validate)
    else:
        model = DIN(ec, TOY_GROUPS, ebc, dense_in_features=2, attention_activation="dice",
                    attention_normalization="softmax" if name == "din_softmax" else "none",
                    use_outer_product=name == "din_outer", over_arch_activation="dice",
                    validate_inputs=validate)
    model.train()
    for seed, lengths in enumerate(LENGTHS):  # move Dice statistics off their start values
        batch = toy_batch(lengths, seed=seed)
        model(batch.sequence_features, batch.pooled_features, batch.dense_features)
    return model.eval()


def _args(seed: int):
    batch = toy_batch(LENGTHS[seed % 2], seed=seed)
    return batch.sequence_features, batch.pooled_features, batch.dense_features


def _saved_and_loaded(scripted):
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("name", ["din", "din_softmax", "din_outer", "base"])
def test_script_trace_and_quantize_equal_eager(name) -> None:
    model = _model(name)
    scripted = _saved_and_loaded(torch.jit.script(model))
    traced = _saved_and_loaded(torch.jit.script(symbolic_trace(model)))
    quantized = quantize_inference_model(copy.deepcopy(model))  # int8 tables
    # Trace a copy: tracing leaves fx proxies cached inside the quantized collections.
    quant_scripted = _saved_and_loaded(torch.jit.script(symbolic_trace(copy.deepcopy(quantized))))
    for seed in range(2):
        args = _args(seed)
        expected = model(*args)
        torch.testing.assert_close(scripted(*args), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(traced(*args), expected, rtol=1e-5, atol=1e-6)
        quant_eager = quantized(*args)
        torch.testing.assert_close(quant_scripted(*args), quant_eager, rtol=1e-5, atol=1e-6)
        # int8 rows: close to fp32, not equal.
        torch.testing.assert_close(quant_eager, expected, rtol=0, atol=0.05)
    # The scripted model keeps its input checks.
    seq, pooled, dense = _args(0)
    bad = seq.values().clone()
    bad[0] = 10_000
    seq_bad = type(seq)(keys=seq.keys(), values=bad, lengths=seq.lengths())
    with pytest.raises(Exception, match="has id 10000 at batch row 0"):
        scripted(seq_bad, pooled, dense)


@pytest.mark.parametrize("name", ["din_outer", "din_softmax", "base"])
def test_training_step_has_no_host_sync_with_checks_off(name) -> None:
    counts = {}
    for validate in (True, False):
        model = DINTrain(_model(name, validate).train())
        batch = toy_batch(LENGTHS[0], seed=3)
        with SyncCounter() as counter:
            loss, _ = model(batch)
            loss.backward()
        counts[validate] = dict(counter.counts)
    assert counts[False] == {}, counts
    assert sum(counts[True].values()) > 0, counts
