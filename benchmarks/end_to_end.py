"""End-to-end DIN training throughput and peak memory: ours against peer libraries.

Same synthetic data (lognormal history lengths, mean about 18, capped at 200), same sizes:
B = 1024, item and category embeddings 64 + 64 (shared by candidate and history), a user
embedding of 64, attention MLP (80, 40) with sigmoid, over arch (200, 80), Adam, one CPU
process. Peers get the histories padded to 200 (their input format); we get them jagged.

* ours: ``torchrec_din`` DIN through its own DataLoader (``.venv``);
* DeepCTR-Torch 0.3.0 ``DIN`` through its ``fit`` (``.venv-peers``);
* torch-rechub 0.9.0 ``DIN`` with a plain training loop (``.venv-peers``);
* FuxiCTR 2.3.10: its ``DIN_Attention`` and ``MLP_Block`` layers assembled as its model zoo's
  DIN (the zoo is not in the pip package), plain training loop (``.venv-peers``).

Each runs in its own subprocess; throughput is samples per second over the timed batches
(after warm-up batches); peak memory is the subprocess's maximum resident set.

Set up the peers once, then run:
    bash benchmarks/setup_peers.sh
    .venv/bin/python benchmarks/end_to_end.py
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH, MAXLEN, EMB = 1024, 200, 64
SIZES = dict(num_users=4000, num_items=20000, num_cates=100, samples_per_user=8,
             length_distribution="lognormal", mean_length=18.0, max_length=MAXLEN)


def make_data(path: str) -> None:
    from torchrec_din.data.synthetic import generate_synthetic

    t = generate_synthetic(seed=0, **SIZES)
    rows = np.arange(len(t))
    flat, lengths = t.history_positions(rows)
    mask = np.arange(MAXLEN)[None, :] < lengths[:, None]
    hist_item = np.zeros((rows.size, MAXLEN), np.int64)
    hist_cate = np.zeros((rows.size, MAXLEN), np.int64)
    hist_item[mask] = t.seq_item[flat]
    hist_cate[mask] = t.seq_cate[flat]
    np.savez(path, user=t.user_row, item=t.item, cate=t.cate, hist_item=hist_item,
             hist_cate=hist_cate, length=lengths, label=t.label,
             vocab=np.array([t.vocab["user"], t.vocab["item"], t.vocab["cate"]]))


def _report(samples: int, seconds: float) -> None:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"samples_per_sec": samples / seconds, "peak_rss_mb": peak_mb}))


def _padded_loop(model, loss_fn, data: dict, warmup: int, batches: int) -> None:  # noqa: ANN001
    """Adam steps over consecutive padded batches of ``data``; reports the timed ones."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tensors = {k: torch.from_numpy(data[k]) for k in ("user", "item", "cate", "hist_item",
                                                      "hist_cate")}
    labels = torch.from_numpy(data["label"]).float()
    start, seen = None, 0
    for step in range(warmup + batches):
        if step == warmup:
            start = time.perf_counter()
        sl = slice(step * BATCH, (step + 1) * BATCH)
        loss = loss_fn(model({k: v[sl] for k, v in tensors.items()}), labels[sl])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= warmup:
            seen += BATCH
    _report(seen, time.perf_counter() - start)


def run_ours(data: dict, warmup: int, batches: int) -> None:
    import torch

    from torchrec_din.data.loader import DINDataset, make_loader
    from torchrec_din.data.synthetic import generate_synthetic
    from torchrec_din.models import DINTrain
    from torchrec_din.build import build_model
    from torchrec_din.config import load_config

    table = generate_synthetic(seed=0, **SIZES)
    config = load_config(None, [
        "features.pooled=[user]", f"model.embedding_dim={EMB}",
        f"model.pooled_embedding_dim={EMB}", "model.attention_hidden_units=[80, 40]",
        "model.over_arch_layer_sizes=[200, 80]", "model.validate_inputs=false"])
    torch.manual_seed(0)
    model = DINTrain(build_model(table.vocab, config))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = make_loader(DINDataset(table, "all", table.schema(["user"])), BATCH, shuffle=True, seed=0)

    def epochs():
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = epochs()
    start, seen = None, 0
    for step in range(warmup + batches):
        if step == warmup:
            start = time.perf_counter()
        batch = next(it)
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= warmup:
            seen += batch.batch_size
    _report(seen, time.perf_counter() - start)


def run_deepctr(data: dict, warmup: int, batches: int) -> None:
    import torch
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIN

    n_user, n_item, n_cate = [int(v) for v in data["vocab"]]
    columns = [
        SparseFeat("user", n_user, embedding_dim=EMB),
        SparseFeat("item", n_item, embedding_dim=EMB),
        SparseFeat("cate", n_cate, embedding_dim=EMB),
        VarLenSparseFeat(SparseFeat("hist_item", n_item, embedding_dim=EMB, embedding_name="item"),
                         maxlen=MAXLEN, length_name="seq_length"),
        VarLenSparseFeat(SparseFeat("hist_cate", n_cate, embedding_dim=EMB, embedding_name="cate"),
                         maxlen=MAXLEN, length_name="seq_length"),
    ]
    torch.manual_seed(0)
    model = DIN(columns, ["item", "cate"], dnn_hidden_units=(200, 80), dnn_activation="prelu",
                att_hidden_size=(80, 40), att_activation="sigmoid", device="cpu")
    model.compile("adam", "binary_crossentropy")
    n = BATCH * (warmup + batches)
    x = {"user": data["user"][:n], "item": data["item"][:n], "cate": data["cate"][:n],
         "hist_item": data["hist_item"][:n], "hist_cate": data["hist_cate"][:n],
         "seq_length": data["length"][:n]}
    y = data["label"][:n]
    small = {k: v[:BATCH * warmup] for k, v in x.items()}
    model.fit(small, y[:BATCH * warmup], batch_size=BATCH, epochs=1, verbose=0)  # warm-up
    rest = {k: v[BATCH * warmup:] for k, v in x.items()}
    start = time.perf_counter()
    model.fit(rest, y[BATCH * warmup:], batch_size=BATCH, epochs=1, verbose=0)
    _report(BATCH * batches, time.perf_counter() - start)


def run_rechub(data: dict, warmup: int, batches: int) -> None:
    import torch
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.ranking import DIN

    n_user, n_item, n_cate = [int(v) for v in data["vocab"]]
    features = [SparseFeature("user", n_user, embed_dim=EMB)]
    target = [SparseFeature("item", n_item, embed_dim=EMB),
              SparseFeature("cate", n_cate, embed_dim=EMB)]
    history = [SequenceFeature("hist_item", n_item, embed_dim=EMB, pooling="concat",
                               shared_with="item"),
               SequenceFeature("hist_cate", n_cate, embed_dim=EMB, pooling="concat",
                               shared_with="cate")]
    torch.manual_seed(0)
    model = DIN(features, history, target, mlp_params={"dims": [200, 80]},
                attention_mlp_params={"dims": [80, 40], "activation": "sigmoid"})
    _padded_loop(model, torch.nn.BCELoss(), data, warmup, batches)  # its DIN outputs probabilities


def run_fuxictr(data: dict, warmup: int, batches: int) -> None:
    """FuxiCTR's model zoo DIN is not in the pip package; its layers are. This assembles
    them the way the zoo's DIN does: shared embeddings, ``DIN_Attention`` over the padded
    history with a mask, ``MLP_Block`` over the concatenation."""
    import torch
    from torch import nn
    from fuxictr.pytorch.layers import DIN_Attention, MLP_Block

    n_user, n_item, n_cate = [int(v) for v in data["vocab"]]

    class FuxiDIN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.user = nn.Embedding(n_user, EMB)
            self.item = nn.Embedding(n_item, EMB)
            self.cate = nn.Embedding(n_cate, EMB)
            self.attention = DIN_Attention(2 * EMB, attention_units=[80, 40],
                                           hidden_activations="Sigmoid")
            self.mlp = MLP_Block(input_dim=5 * EMB, output_dim=1, hidden_units=[200, 80],
                                 hidden_activations="PReLU")

        def forward(self, x):
            target = torch.cat([self.item(x["item"]), self.cate(x["cate"])], -1)
            hist = torch.cat([self.item(x["hist_item"]), self.cate(x["hist_cate"])], -1)
            mask = (x["hist_item"] > 0).float()
            interest = self.attention(target, hist, mask)
            return self.mlp(torch.cat([self.user(x["user"]), target, interest], -1)).squeeze(1)

    torch.manual_seed(0)
    model = FuxiDIN()
    _padded_loop(model, torch.nn.BCEWithLogitsLoss(), data, warmup, batches)


RUNNERS = {"ours": run_ours, "deepctr-torch": run_deepctr, "torch-rechub": run_rechub,
           "fuxictr": run_fuxictr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=list(RUNNERS))
    parser.add_argument("--data", default=os.path.join(ROOT, ".cache", "e2e_data.npz"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    if args.child:
        data = dict(np.load(args.data))
        batches = args.batches * (4 if args.child == "ours" else 1)  # ours is fast: time longer
        RUNNERS[args.child](data, args.warmup, batches)
        return
    os.makedirs(os.path.dirname(args.data), exist_ok=True)
    make_data(args.data)
    pythons = {"ours": os.path.join(ROOT, ".venv", "bin", "python"),
               "deepctr-torch": os.path.join(ROOT, ".venv-peers", "bin", "python"),
               "torch-rechub": os.path.join(ROOT, ".venv-peers", "bin", "python"),
               "fuxictr": os.path.join(ROOT, ".venv-peers", "bin", "python")}
    results = {}
    for name, python in pythons.items():
        if not os.path.exists(python):
            print(f"{name}: {python} missing; run bash benchmarks/setup_peers.sh")
            continue
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([python, __file__, "--child", name, "--data", args.data,
                                  "--warmup", str(args.warmup), "--batches", str(args.batches)],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(f"{name} failed:\n{out.stderr[-2000:]}")
                break
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if runs:
            results[name] = {"samples_per_sec": statistics.median(r["samples_per_sec"] for r in runs),
                             "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                             "runs": runs}
    lengths = np.load(args.data)["length"]
    print(f"B={BATCH}, histories: mean {lengths.mean():.1f}, max {lengths.max()} (padded to "
          f"{MAXLEN} for peers); embeddings {EMB}+{EMB}, attention (80, 40), over arch (200, 80), "
          f"Adam; medians of {args.repeats} runs\n")
    print(f"{'library':<16} {'samples/s':>10} {'peak RSS MB':>12} {'ours is':>9}")
    ours = results.get("ours", {}).get("samples_per_sec")
    for name, r in results.items():
        ratio = f"{ours / r['samples_per_sec']:.1f}x" if ours and name != "ours" else "-"
        print(f"{name:<16} {r['samples_per_sec']:>10.0f} {r['peak_rss_mb']:>12.0f} {ratio:>9}")
    with open(os.path.join(HERE, "end_to_end_results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
