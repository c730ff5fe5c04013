"""The grouped form for a user's own model (torchrec_din.grouped): K_u candidates against
one history per user score as one row per candidate does."""

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_din.grouped import pooled_kjt, request_kjt

from conftest import load_example  # tests/conftest.py

# per user: click items, buy items, candidate items, user, hour
USERS = [([5, 9, 31], [9], [40, 41, 5], 3, 7),
         ([], [3, 4], [7, 8], 1, 0),
         ([1], [], [2], 9, 23),
         (list(range(10, 40)), [11, 12], [11, 59, 60, 61], 0, 12)]


def _request(example, users, seed=0):
    """The grouped inputs of ``users`` (see USERS): sequence KJT, pooled KJT, dense rows."""
    cates = example.CATES
    def ids(rows, width):
        return torch.tensor(rows, dtype=torch.long).reshape(-1, width)

    hist_clicks = ids([[i, i % cates] for c, *_ in users for i in c], 2)
    hist_buys = ids([[i] for _, b, *_ in users for i in b], 1)
    cands = ids([[i, i % cates] for *_, k, _, _ in users for i in k], 2)
    kjt = request_kjt(["item", "cate"], [["click_item", "click_cate"], ["buy_item"]],
                      [hist_clicks, hist_buys],
                      [torch.tensor([len(u[0]) for u in users]),
                       torch.tensor([len(u[1]) for u in users])],
                      cands, torch.tensor([len(u[2]) for u in users]))
    pooled = pooled_kjt(["user", "hour"], torch.tensor([[u[3], u[4]] for u in users]))
    dense = torch.randn(len(users), example.DENSE, generator=torch.Generator().manual_seed(seed))
    return kjt, pooled, dense


def test_own_ranker_grouped_scores_equal_one_row_per_candidate() -> None:
    example = load_example("your_own_model")
    torch.manual_seed(0)
    model = example.MyRanker().eval()
    cates = example.CATES
    kjt, pooled, dense = _request(example, USERS)
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


def _random_users(n, seed):
    g = torch.Generator().manual_seed(seed)

    def ids(high, count):
        return torch.randint(0, high, (count,), generator=g).tolist()

    users = []
    for _ in range(n):
        clicks, buys, cands = (int(torch.randint(0, hi, (1,), generator=g)) for hi in (40, 4, 9))
        users.append((ids(2000, clicks), ids(2000, buys), ids(2000, cands + 1),
                      int(torch.randint(0, 500, (1,), generator=g)),
                      int(torch.randint(0, 24, (1,), generator=g))))
    return users


def test_own_ranker_grouped_form_exports_the_pt2_way(tmp_path) -> None:
    """``export_model`` of the own model's grouped form: one program serves requests of any
    number of users, candidates per user and history lengths (empty ones included), equal
    to eager after save / load."""
    from torchrec_din.export import export_model, load_program, save_program

    example = load_example("your_own_model")
    torch.manual_seed(0)
    scorer = example.GroupedScorer(example.MyRanker()).eval()
    path = str(tmp_path / "grouped.pt2")
    save_program(export_model(scorer, _request(example, USERS)), path)
    program = load_program(path).module()
    requests = [_random_users(1, 1), _random_users(7, 2), _random_users(30, 3),
                [([], [], [4], 0, 0)], [([], [], [4, 5, 6], 1, 2), ([], [], [7], 3, 4)]]
    with torch.no_grad():
        for i, users in enumerate(requests):
            inputs = _request(example, users, seed=i)
            got, want = program(*inputs), scorer(*inputs)
            assert got.shape == (sum(len(u[2]) for u in users),)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
