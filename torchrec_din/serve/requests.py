"""Scoring requests in JSON Lines: one user per line, many candidates each.

A line (a model with one attention group over item and cate)::

    {"id": "u1", "user": {"user": 12, "age": 3, "gender": 1, "occupation": 5},
     "history": {"item": [5, 9, 31], "cate": [2, 2, 7]},
     "candidates": {"item": [40, 41], "cate": [3, 2]},
     "dense": []}

With several attention groups, ``history`` holds one object per group, by group name, each
with the ids of that group's candidate features (the id spaces its history pairs with)::

    "history": {"clicks": {"item": [5, 9], "cate": [2, 2]}, "buys": {"item": [9]}}

A pooled feature takes one id, or a list of ids where it is multi-hot (``"tags": [3, 8]``).
Ids are the data set's dense ids (those in training). The output line is
``{"id": "u1", "scores": [p_40, p_41]}`` with click probabilities in candidate order.
"""

import json
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


class RequestError(ValueError):
    """A malformed request line; the message names the line."""


def _ids(obj: Any, where: str, line: int) -> List[int]:
    if not isinstance(obj, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in obj):
        raise RequestError(f"line {line}: {where} must be a list of integer ids, got {obj!r:.80}")
    return obj


def _columns(obj: Any, where: str, names: Sequence[str], line: int) -> List[List[int]]:
    """Equal-length id lists ``obj[name]`` for each name."""
    cols = [_ids(obj.get(f), f"{where}.{f}", line) for f in names]
    if len({len(c) for c in cols}) > 1:
        raise RequestError(f"line {line}: {where} lists {list(names)} differ in length "
                           f"({[len(c) for c in cols]})")
    return cols


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_request(text: str, line: int, features: Sequence[str],
                  groups: Sequence[Tuple[str, Sequence[str]]], pooled: Sequence[str],
                  rows: Dict[str, int], dense_in_features: int,
                  multi_hot: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Validate one request line against the model's features and table sizes.

    Args:
        features: candidate features (``DINScorer.features``).
        groups: (name, candidate features) of each attention group; its history ids are
            given under those feature names.
        pooled: pooled features (an id or a list of ids each); rows: feature -> table rows.
        multi_hot: the pooled features trained as id lists; the others take exactly one id
            (a list would be sum-pooled into a vector training never saw). None: any.
    """
    try:
        req = json.loads(text, parse_constant=_no_constant)  # NaN / Infinity are not JSON
    except (json.JSONDecodeError, ValueError) as e:
        raise RequestError(f"line {line}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(req, dict):
        raise RequestError(f"line {line}: expected a JSON object")
    rid = req.get("id", line)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise RequestError(f"line {line}: 'id' must be a string or an integer, got {rid!r:.80}")
    names = [name for name, _ in groups]
    if not isinstance(req.get("candidates"), dict):
        raise RequestError(f"line {line}: missing object 'candidates' with lists {list(features)}")
    history = req.get("history")
    nested = isinstance(history, dict) and all(isinstance(history.get(n), dict) for n in names)
    if not isinstance(history, dict) or (len(groups) > 1 and not nested):
        expected = (f"lists {list(groups[0][1])}" if len(groups) == 1 else
                    f"one object per attention group {names}")
        raise RequestError(f"line {line}: missing object 'history' with {expected}")
    hist = [_columns(history[name] if nested else history,
                     f"history.{name}" if nested else "history", group_features, line)
            for name, group_features in groups]
    cand = _columns(req["candidates"], "candidates", features, line)
    if not cand[0]:
        raise RequestError(f"line {line}: no candidates")
    user = req.get("user", {})
    if pooled and not isinstance(user, dict):
        raise RequestError(f"line {line}: 'user' must be an object with {list(pooled)}")
    pooled_ids: List[List[int]] = []
    for f in pooled:
        value = user.get(f)
        if multi_hot is not None and f not in multi_hot and not (
                isinstance(value, int) and not isinstance(value, bool)):
            raise RequestError(f"line {line}: user.{f} must be one integer id (the model was "
                               f"trained with one {f} per sample), got {value!r:.80}")
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        elif not isinstance(value, list):
            raise RequestError(f"line {line}: user.{f} must be an integer id or a list of "
                               f"them, got {value!r:.80}")
        pooled_ids.append(_ids(value, f"user.{f}", line))
    checks = [("candidates", features, cand)] + [
        (f"history.{name}" if nested else "history", group_features, cols)
        for (name, group_features), cols in zip(groups, hist)] + [("user", pooled, pooled_ids)]
    for where, feature_names, cols in checks:
        for f, values in zip(feature_names, cols):
            bad = [v for v in values if not 0 <= v < rows[f]]
            if bad:
                raise RequestError(f"line {line}: {where}.{f} id {bad[0]} out of range "
                                   f"[0, {rows[f]})")
    dense = req.get("dense", [])
    if not isinstance(dense, list) or len(dense) != dense_in_features:
        raise RequestError(f"line {line}: dense must be a list of {dense_in_features} numbers")
    for i, x in enumerate(dense):
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
            raise RequestError(f"line {line}: dense[{i}] must be a finite number, got {x!r:.80}")
    return {"id": rid, "line": line, "history": hist, "candidates": cand,
            "pooled": pooled_ids, "dense": [float(x) for x in dense]}


def read_requests(path: str, features: Sequence[str],
                  groups: Sequence[Tuple[str, Sequence[str]]], pooled: Sequence[str],
                  rows: Dict[str, int], dense_in_features: int,
                  multi_hot: Optional[Sequence[str]] = None) -> Iterator[Dict[str, Any]]:
    """The validated requests of a JSON Lines file (see :func:`parse_request`)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(f"line {number}: not UTF-8 text (byte {e.start})") from None
            if text.strip():
                yield parse_request(text, number, features, groups, pooled, rows,
                                    dense_in_features, multi_hot)


def history_length(request: Dict[str, Any], max_history: int = 0) -> int:
    """Behaviours of a request the scorer attends to, all groups together: the newest
    ``max_history`` of each (0: all)."""
    total = 0
    for cols in request["history"]:
        n = len(cols[0]) if cols else 0
        total += min(n, max_history) if max_history > 0 else n
    return total


def pairs(request: Dict[str, Any], max_history: int = 0) -> int:
    """(candidate, behaviour) pairs a request costs the attention, all groups together (per
    candidate at least as many as there are groups)."""
    groups = max(len(request["history"]), 1)
    return len(request["candidates"][0]) * max(history_length(request, max_history), groups)


def batches_within(requests: List[Dict[str, Any]], max_users: int, max_pairs: int,
                   max_history: int = 0,
                   max_candidates: Optional[int] = None) -> Iterator[List[Dict[str, Any]]]:
    """Consecutive groups of at most ``max_users`` requests, ``max_pairs`` pairs and
    ``max_candidates`` candidates; a single request above ``max_pairs`` is a RequestError
    naming its line (one above ``max_candidates`` is cut first, :func:`split_candidates`)."""
    chunk: List[Dict[str, Any]] = []
    total = 0
    candidates = 0
    for r in requests:
        k = len(r["candidates"][0])
        cost = pairs(r, max_history)
        if cost > max_pairs:
            raise RequestError(
                f"line {r['line']}: {k} candidates x "
                f"{history_length(r, max_history)} behaviours = {cost:,} pairs, "
                f"over the limit of {max_pairs:,} per call (--max-pairs); split the request")
        if chunk and (len(chunk) >= max_users or total + cost > max_pairs
                      or (max_candidates is not None and candidates + k > max_candidates)):
            yield chunk
            chunk, total, candidates = [], 0, 0
        chunk.append(r)
        total += cost
        candidates += k
    if chunk:
        yield chunk


def split_candidates(requests: List[Dict[str, Any]],
                     max_candidates: int) -> List[Dict[str, Any]]:
    """Requests with more than ``max_candidates`` candidates cut into parts of at most that
    many (each part keeps the user's history, pooled and dense features), so that one call's
    memory is bounded by candidates as well as by pairs: the over arch and the candidate
    gathers cost memory per candidate whatever the history. Every part records
    ``request``, the position of the request it came from."""
    parts: List[Dict[str, Any]] = []
    for i, r in enumerate(requests):
        k = len(r["candidates"][0])
        for start in range(0, k, max_candidates):
            part = dict(r, request=i)
            part["candidates"] = [c[start:start + max_candidates] for c in r["candidates"]]
            parts.append(part)
    return parts


def to_tensors(requests: List[Dict[str, Any]],
               pooled_features: Sequence[str]) -> Tuple[Any, ...]:
    """:class:`DINScorer` inputs for a list of parsed requests (users back to back): per
    group history ids and lengths (lists), candidate ids and counts, the pooled features'
    KeyedJaggedTensor (keys ``pooled_features``, one row per user), dense."""
    groups = len(requests[0]["history"])
    hist = [[torch.tensor(r["history"][g], dtype=torch.long).reshape(
        len(r["history"][g]), -1).t() for r in requests] for g in range(groups)]
    cand = [torch.tensor(r["candidates"], dtype=torch.long).t() for r in requests]
    pooled = [r["pooled"][i] for i in range(len(pooled_features)) for r in requests]
    return (
        [torch.cat(h, 0) for h in hist],
        [torch.tensor([x.size(0) for x in h], dtype=torch.long) for h in hist],
        torch.cat(cand, 0),
        torch.tensor([c.size(0) for c in cand], dtype=torch.long),
        KeyedJaggedTensor(keys=list(pooled_features),
                          values=torch.tensor(sum(pooled, []), dtype=torch.long),
                          lengths=torch.tensor([len(p) for p in pooled], dtype=torch.long)),
        torch.tensor([r["dense"] for r in requests],
                     dtype=torch.float32).reshape(len(requests), -1),
    )


def to_device(inputs: Tuple[Any, ...], device: torch.device) -> Tuple[Any, ...]:
    """:func:`to_tensors`' output moved to ``device`` (tensors, lists of them, KJTs)."""
    def move(x: Any) -> Any:
        if isinstance(x, list):
            return [move(v) for v in x]
        return x.to(device, non_blocking=True)

    return tuple(move(x) for x in inputs)
