"""The PT2 path measured side by side in one run: serving formats, compiled training step,
compiled attention.

1. Serving (``--part serving``): the MovieLens DIN's grouped scorer as the eager module, as
   TorchScript (``export --format torchscript``) and as the AOTInductor package (``export``,
   the default), on one user with K candidates against a history of H behaviours, and the
   same pairs sent as one row per candidate (each row repeats the history: what a client
   without the grouped form sends) through the same package. Candidates per second and the
   shared path's executed GFLOP/s as a share of a plain matrix product of the pairs' shape
   ([pairs, 2D] x [2D, 80], timed in the same run).
2. Training step (``--part step``): DIN on MovieLens-100k batches (the shipped config),
   forward + backward + Adam, eager vs ``train.compile`` (``compile_dense``: interaction and
   over arch under torch.compile, dynamic shapes), at B = 256 and 2,048.
3. Profile (``--part profile``): where the eager grouped and one-row-per-candidate forms
   spend their time at K = 1,000, per operator (torch.profiler).
4. Attention (``--part attention``): ``JaggedTargetAttention`` forward + backward at B = 1,024,
   D = 128, MovieLens-like history lengths, eager vs torch.compile(dynamic=True), as a share of
   the GEMM of benchmarks/attention.py.

Medians of ``--repeats`` timed calls after warm-up (compilation excluded, its time printed).

    .venv/bin/python benchmarks/pt2.py                      # all three
    .venv/bin/python benchmarks/pt2.py --part serving --histories 100 1000
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from attention import add_malloc_flag, apply_malloc, time_it  # noqa: E402


def serving(args: argparse.Namespace) -> None:
    from serving import executed_flops, per_row, requests, scorer_inputs, VOCAB

    from torchrec_din.serve import DINScorer
    from torchrec_din.serve.export import export_aoti_scorer, load_aoti_scorer, script_scorer
    from torchrec_din.build import build_model
    from torchrec_din.config import load_config

    torch.manual_seed(0)
    config = load_config("configs/movielens_din.yaml")
    model = build_model(VOCAB, config).eval()
    eager = DINScorer(model).eval()
    scripted = script_scorer(model)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = os.path.join(tmp, "scorer.pt2")
        export_aoti_scorer(model, path)
        compile_s = time.perf_counter() - start
        aoti, _ = load_aoti_scorer(path)
        m = config["model"]
        d = 2 * m["embedding_dim"]
        print(f"\n## Serving: one user, K candidates, history H ({torch.get_num_threads()} "
              f"threads; AOTI package compiled in {compile_s:.0f} s)\n")
        print("| K | H | eager cand/s | TorchScript cand/s | AOTI cand/s | AOTI / eager | "
              "AOTI % of matmul | one row per candidate: eager cand/s | grouped / per row, "
              "eager | one row per candidate: AOTI cand/s | grouped / per row, AOTI |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        with torch.no_grad():
            for history in args.histories:
                for k in (100, 1000):
                    raw = requests(1, k, history, seed=k + history)
                    inputs = scorer_inputs(raw)
                    rows = scorer_inputs(per_row(raw))
                    ref = eager(*inputs)
                    for runner in (scripted, aoti):
                        torch.testing.assert_close(runner(*inputs), ref, rtol=1e-4, atol=1e-4)
                    torch.testing.assert_close(aoti(*rows), ref, rtol=1e-4, atol=1e-4)
                    t = {name: time_it(lambda r=r: r(*inputs), args.repeats, warmup=2)
                         for name, r in (("eager", eager), ("script", scripted),
                                         ("aoti", aoti))}
                    t_rows = time_it(lambda: aoti(*rows), args.repeats, warmup=2)
                    t_rows_eager = time_it(lambda: eager(*rows), args.repeats, warmup=2)
                    pairs = int((raw[1][0] * raw[3]).sum())
                    a, w = torch.randn(pairs, d), torch.randn(d, m["attention_hidden_units"][0])
                    matmul = 2 * pairs * d * w.size(1) / time_it(lambda: a @ w, args.repeats,
                                                                  warmup=2) / 1e9
                    gflops = executed_flops(config, raw) / t["aoti"] / 1e9
                    print(f"| {k:,} | {history:,} | {k / t['eager']:,.0f} | "
                          f"{k / t['script']:,.0f} | {k / t['aoti']:,.0f} | "
                          f"{t['eager'] / t['aoti']:.2f}x | {gflops / matmul:.0%} "
                          f"({gflops:.1f} / {matmul:.1f} GFLOP/s) | {k / t_rows_eager:,.0f} | "
                          f"{t_rows_eager / t['eager']:.2f}x | {k / t_rows:,.0f} | "
                          f"{t_rows / t['aoti']:.2f}x |")


def profile(args: argparse.Namespace) -> None:
    """Where the eager time goes, grouped vs one row per candidate, at K = 1,000 and each H:
    torch.profiler's self CPU time per operator (median of ``--repeats`` calls of each
    form, taken in turn), the operators that take most of either form."""
    from torch.profiler import profile as torch_profile, ProfilerActivity

    from serving import per_row, requests, scorer_inputs, VOCAB

    from torchrec_din.serve import DINScorer
    from torchrec_din.build import build_model
    from torchrec_din.config import load_config

    torch.manual_seed(0)
    model = build_model(VOCAB, load_config("configs/movielens_din.yaml")).eval()
    eager = DINScorer(model).eval()

    def self_ms(inputs) -> Dict[str, float]:
        with torch.no_grad(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            eager(*inputs)
        return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}

    def medians(calls: List[Dict[str, float]]) -> Dict[str, float]:
        keys = set().union(*calls)
        return {k: float(np.median([c.get(k, 0.0) for c in calls])) for k in keys}

    for history in args.histories:
        raw = requests(1, 1000, history, seed=1000 + history)
        both = (scorer_inputs(raw), scorer_inputs(per_row(raw)))
        with torch.no_grad():  # warm both first: the heap grows to the larger one's peak once
            for _ in range(2):
                for inputs in both:
                    eager(*inputs)
        # One profiled call of each form in turn, per-operator medians over the repeats:
        # the machine's noise hits both forms alike.
        calls: Tuple[List[Dict[str, float]], List[Dict[str, float]]] = ([], [])
        for _ in range(args.repeats):
            for inputs, out in zip(both, calls):
                out.append(self_ms(inputs))
        grouped, rows = medians(calls[0]), medians(calls[1])
        total_g, total_r = sum(grouped.values()), sum(rows.values())
        print(f"\n## Eager profile, K = 1,000, H = {history:,}: self CPU ms per call "
              f"(grouped {total_g:.1f} ms, one row per candidate {total_r:.1f} ms, "
              f"{total_r / total_g:.2f}x)\n")
        print("| operator | grouped ms | share | one row per candidate ms | share | "
              "saved ms |")
        print("|---|---|---|---|---|---|")
        top = sorted(set(grouped) | set(rows),
                     key=lambda k: -max(grouped.get(k, 0.0), rows.get(k, 0.0)))[:12]
        for key in top:
            g, r = grouped.get(key, 0.0), rows.get(key, 0.0)
            print(f"| `{key}` | {g:.2f} | {g / total_g:.0%} | {r:.2f} | {r / total_r:.0%} | "
                  f"{r - g:+.2f} |")
        rest_g = total_g - sum(grouped.get(k, 0.0) for k in top)
        rest_r = total_r - sum(rows.get(k, 0.0) for k in top)
        print(f"| (all other operators) | {rest_g:.2f} | {rest_g / total_g:.0%} | "
              f"{rest_r:.2f} | {rest_r / total_r:.0%} | {rest_r - rest_g:+.2f} |")


def step(args: argparse.Namespace) -> None:
    import copy

    from torchrec_din.data.loader import DINDataset
    from torchrec_din.data.schema import FeatureSchema
    from torchrec_din.models import compile_dense, DINTrain
    from torchrec_din.build import build_model
    from torchrec_din.data.registry import build_table
    from torchrec_din.config import load_config

    config = load_config("configs/movielens_din.yaml", ["data.protocol=rating"])
    table = build_table(config["data"], 0)
    ds = DINDataset(table, "train", FeatureSchema.from_config(config["features"]))
    print(f"\n## Training step: MovieLens-100k DIN (Dice), forward + backward + Adam, "
          f"{torch.get_num_threads()} threads\n")
    print("| batch | eager ms | compiled ms | compiled / eager speed-up | first compiled "
          "step (compiles) |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for b in (256, 2048):
        batches = [ds[rng.choice(len(ds), b, replace=False)] for _ in range(args.repeats + 3)]
        torch.manual_seed(0)
        eager = build_model(table.vocab, config)
        compiled = copy.deepcopy(eager)
        compile_dense(compiled)
        out: Dict[str, float] = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            train = DINTrain(model)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            it = iter(batches)

            def one() -> None:
                loss, _ = train(next(it))
                opt.zero_grad()
                loss.backward()
                opt.step()

            start = time.perf_counter()
            one()
            out[name + "_first"] = time.perf_counter() - start
            out[name] = time_it(one, args.repeats, warmup=1)
        print(f"| {b:,} | {out['eager'] * 1e3:.1f} | {out['compiled'] * 1e3:.1f} | "
              f"{out['eager'] / out['compiled']:.2f}x | {out['compiled_first']:.0f} s |")


def attention(args: argparse.Namespace) -> None:
    from attention import B, D, executed_flops, make_inputs, matmul_gflops, movielens_lengths
    from torchrec.sparse.jagged_tensor import JaggedTensor

    from torchrec_din import JaggedTargetAttention

    rng = np.random.default_rng(0)
    lengths = rng.choice(movielens_lengths(), B)
    torch.manual_seed(0)
    attn = JaggedTargetAttention(D, activation="dice", validate_inputs=False)
    query, values, lens = make_inputs(lengths, "jagged", 0)
    compiled = torch.compile(attn, dynamic=True)
    n = int(lens.sum())
    print(f"\n## Attention forward + backward: B = {B:,}, D = {D}, N = {n:,} MovieLens-like "
          f"behaviours, Dice, {torch.get_num_threads()} threads\n")
    print("| | ms | GFLOP/s | % of the GEMM |")
    print("|---|---|---|---|")
    gemm = matmul_gflops(n, args.repeats)
    for name, module in (("eager", attn), ("torch.compile", compiled)):
        def run(m=module) -> None:
            m(query, JaggedTensor(values=values, lengths=lens)).sum().backward()

        seconds = time_it(run, args.repeats, warmup=2)
        gflops = executed_flops(n, B) / seconds / 1e9
        print(f"| {name} | {seconds * 1e3:.1f} | {gflops:.1f} | {gflops / gemm:.0%} |")
    print(f"| GEMM [N, 2D] x [2D, 80] fwd + bwd | | {gemm:.1f} | 100% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="+",
                        choices=["serving", "profile", "step", "attention"],
                        default=["serving", "profile", "step", "attention"])
    parser.add_argument("--histories", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=7)
    add_malloc_flag(parser)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {apply_malloc(args)}, medians of {args.repeats}")
    parts: Dict[str, Callable[[argparse.Namespace], None]] = {
        "serving": serving, "profile": profile, "step": step, "attention": attention}
    for part in args.part:
        parts[part](args)


if __name__ == "__main__":
    main()
