"""The attention modules script, trace+script, export (B and N dynamic) and round-trip through
save/load with outputs equal to eager, and do no host sync with their checks off."""

import io
from typing import Dict, List

import pytest
import torch
from torch.export import Dim, ShapesCollection
from torchrec.fx import symbolic_trace
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_din import AttentionGroup, DINInteraction, JaggedTargetAttention
from torchrec_din.testing.sync import SyncCounter
from torchrec_din.testing.toy import TOY_GROUPS, toy_batch, toy_collections

D = 8
ACTIVATIONS = ["sigmoid", "dice", "prelu", "relu"]
NORMALIZATIONS = ["none", "softmax"]
# Ragged with empty histories; the second has another B and N than the first.
LENGTHS = [[3, 0, 5, 1, 0, 2], [0, 7, 1, 0, 0, 4, 2, 9, 1]]

def _attention(activation: str, normalization: str, outer: bool,
               dim: int = D) -> JaggedTargetAttention:
    torch.manual_seed(0)
    attn = JaggedTargetAttention(dim, (16, 8), activation, normalization, outer)
    attn.train()
    for lengths in LENGTHS:  # move Dice's running statistics off their start values
        q, k = _inputs(lengths, 9, dim)
        attn(q, k)
    return attn.eval()


def _inputs(lengths: List[int], seed: int, dim: int = D):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths, dtype=torch.long)
    query = torch.randn(len(lengths), dim, generator=g)
    keys = JaggedTensor(values=torch.randn(int(lens.sum()), dim, generator=g), lengths=lens)
    return query, keys


def _roundtrip_script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


# (outer, dim): dim 32 takes the outer product's FBGEMM path in eager and script, while the
# exported program takes the GEMM path, so that case also checks the two against each other.
@pytest.mark.parametrize("outer,dim", [(False, D), (True, D), (True, 32)])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_attention_scripts_traces_and_exports(activation, normalization, outer, dim) -> None:
    attn = _attention(activation, normalization, outer, dim)
    scripted = torch.jit.script(attn)
    loaded = _roundtrip_script(attn)
    traced = torch.jit.script(symbolic_trace(attn))
    q0, k0 = _inputs(LENGTHS[0], 1, dim)
    sc = ShapesCollection()
    batch, total = Dim("B"), Dim("N")
    sc[q0], sc[k0.values()], sc[k0.lengths()] = {0: batch}, {0: total}, {0: batch}
    exported = torch.export.export(attn, (q0, k0), dynamic_shapes=sc.dynamic_shapes(attn, (q0, k0)))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    # The program's input spec names JaggedTensor; torch.load's safe mode must be told of it.
    with torch.serialization.safe_globals([JaggedTensor]):
        reloaded = torch.export.load(buffer).module()
    for seed, lengths in enumerate(LENGTHS):
        q, k = _inputs(lengths, seed + 1, dim)
        expected = attn(q, k)
        assert torch.all(expected[k.lengths() == 0] == 0)
        for name, out in [("script", scripted(q, k)), ("script saved/loaded", loaded(q, k)),
                          ("fx trace + script", traced(q, k)),
                          ("export", exported.module()(q, k)),
                          ("export saved/loaded", reloaded(q, k))]:
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5, msg=name)
    pooled, weights = scripted.forward_with_weights(q, k)
    ref_pooled, ref_weights = attn.forward_with_weights(q, k)
    torch.testing.assert_close(weights.values(), ref_weights.values())


def test_exported_attention_keeps_its_value_check() -> None:
    attn = _attention("sigmoid", "none", False)
    q, k = _inputs(LENGTHS[0], 1)
    sc = ShapesCollection()
    batch, total = Dim("B"), Dim("N")
    sc[q], sc[k.values()], sc[k.lengths()] = {0: batch}, {0: total}, {0: batch}
    exported = torch.export.export(attn, (q, k), dynamic_shapes=sc.dynamic_shapes(attn, (q, k)))
    bad = JaggedTensor(values=k.values(), lengths=k.lengths() + 1)  # sums past the rows
    with pytest.raises(RuntimeError, match="sum to the number of value rows"):
        exported.module()(q, bad)


def _embeddings(lengths: List[int], seed: int) -> Dict[str, JaggedTensor]:
    torch.manual_seed(0)
    ec, _ = toy_collections()
    with torch.no_grad():
        return ec(toy_batch(lengths, seed=seed).sequence_features)


@pytest.mark.parametrize("outer", [False, True])
@pytest.mark.parametrize("activation,normalization", [("dice", "softmax"), ("sigmoid", "none"),
                                                      ("prelu", "softmax"), ("relu", "none")])
def test_interaction_scripts_traces_and_exports(activation, normalization, outer) -> None:
    ec, _ = toy_collections()
    torch.manual_seed(0)
    groups = TOY_GROUPS + [AttentionGroup("items_only", ["item"], ["hist_item"])]
    din = DINInteraction.from_collections(groups, [ec], hidden_units=(16, 8),
                                          activation=activation, normalization=normalization,
                                          use_outer_product=outer).eval()
    emb0 = _embeddings(LENGTHS[0], 0)
    sc = ShapesCollection()
    batch, total = Dim("B"), Dim("N")
    for name, jt in emb0.items():
        sc[jt.values()] = {0: total if name.startswith("hist") else batch}
        sc[jt.lengths()] = {0: batch}
    exported = torch.export.export(din, (emb0,), dynamic_shapes=sc.dynamic_shapes(din, (emb0,)))
    scripted = _roundtrip_script(din)
    traced = torch.jit.script(symbolic_trace(din))
    for seed, lengths in enumerate(LENGTHS):
        emb = _embeddings(lengths, seed)
        expected = din(emb)
        assert expected.shape == (len(lengths), din.output_dim)
        for name, out in [("script saved/loaded", scripted(emb)),
                          ("fx trace + script", traced(emb)),
                          ("export", exported.module()(emb))]:
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(scripted.candidates(emb), din.candidates(emb))


def test_no_host_sync_with_checks_off_and_counted_with_them_on() -> None:
    q, k = _inputs(LENGTHS[0], 1)
    q.requires_grad_()
    values = k.values().requires_grad_()
    counts = {}
    for validate in (True, False):
        attn = JaggedTargetAttention(D, activation="dice", normalization="softmax",
                                     use_outer_product=True, validate_inputs=validate)
        with SyncCounter() as counter:
            attn(q, JaggedTensor(values=values, lengths=k.lengths())).sum().backward()
        counts[("attention", validate)] = sum(counter.counts.values())
        ec, _ = toy_collections()
        emb = ec(toy_batch(LENGTHS[1]).sequence_features)
        din = DINInteraction.from_collections(TOY_GROUPS, [ec], activation="dice",
                                              normalization="softmax", validate_inputs=validate)
        with SyncCounter() as counter:
            din(emb).sum().backward()
        counts[("interaction", validate)] = sum(counter.counts.values())
    assert counts[("attention", False)] == 0 and counts[("interaction", False)] == 0, counts
    # The switch is what removes them: with checks on, the value checks read the host.
    assert counts[("attention", True)] > 0 and counts[("interaction", True)] > 0, counts
