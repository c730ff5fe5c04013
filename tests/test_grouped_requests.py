"""The grouped form for a user's own model (torchrec_din.grouped): K_u candidates against
one history per user score as one row per candidate does."""

import importlib.util
import os

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.grouped import pooled_kjt, request_kjt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# per user: click items, buy items, candidate items, user, hour
USERS = [([5, 9, 31], [9], [40, 41, 5], 3, 7),
         ([], [3, 4], [7, 8], 1, 0),
         ([1], [], [2], 9, 23),
         (list(range(10, 40)), [11, 12], [11, 59, 60, 61], 0, 12)]


def _example():
    spec = importlib.util.spec_from_file_location(
        "your_own_model", os.path.join(ROOT, "examples", "your_own_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_ranker_grouped_scores_equal_one_row_per_candidate() -> None:
    example = _example()
    torch.manual_seed(0)
    model = example.MyRanker().eval()
    cates = example.CATES
    hist_clicks = torch.tensor([[i, i % cates] for c, *_ in USERS for i in c]).reshape(-1, 2)
    hist_buys = torch.tensor([[i] for _, b, *_ in USERS for i in b]).reshape(-1, 1)
    cands = torch.tensor([[i, i % cates] for *_, k, _, _ in USERS for i in k])
    kjt = request_kjt(["item", "cate"], [["click_item", "click_cate"], ["buy_item"]],
                      [hist_clicks, hist_buys],
                      [torch.tensor([len(u[0]) for u in USERS]),
                       torch.tensor([len(u[1]) for u in USERS])],
                      cands, torch.tensor([len(u[2]) for u in USERS]))
    pooled = pooled_kjt(["user", "hour"], torch.tensor([[u[3], u[4]] for u in USERS]))
    dense = torch.randn(len(USERS), example.DENSE)
    with torch.no_grad():
        grouped = model.score_grouped(kjt, pooled, dense)

        # The same pairs as one row per candidate, each with its user's histories and rows.
        rows = [(u, item) for u, user in enumerate(USERS) for item in user[2]]
        lists = {k: [] for k in ["item", "cate", "click_item", "click_cate", "buy_item"]}
        for u, item in rows:
            clicks, buys = USERS[u][0], USERS[u][1]
            lists["item"].append([item])
            lists["cate"].append([item % cates])
            lists["click_item"].append(clicks)
            lists["click_cate"].append([i % cates for i in clicks])
            lists["buy_item"].append(buys)
        keys = list(lists)
        seq = KeyedJaggedTensor(
            keys=keys, values=torch.tensor(sum((sum(lists[k], []) for k in keys), [])),
            lengths=torch.tensor([len(x) for k in keys for x in lists[k]]))
        users = torch.tensor([u for u, _ in rows])
        per_row = model.score(seq, pooled_kjt(["user", "hour"],
                                              torch.tensor([[USERS[u][3], USERS[u][4]]
                                                            for u, _ in rows])),
                              dense.index_select(0, users))
    assert grouped.shape == (len(rows),)
    torch.testing.assert_close(grouped, per_row, rtol=1e-5, atol=1e-6)
