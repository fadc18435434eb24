"""A slow, obviously-correct ZSPAPrune written straight from the equations (float64,
plain Python loops), used as the oracle for zspa_vllm.core.selection. Shares only the tie
tolerance with the implementation under test: that is part of the contract."""

from __future__ import annotations

import math

import torch

from zspa_vllm.core.selection import TIE_TOL


def cosine(a: list[float], b: list[float]) -> float:
    norm_a = math.sqrt(sum(x * x for x in a))
    norm_b = math.sqrt(sum(x * x for x in b))
    if norm_a == 0.0 or norm_b == 0.0:
        return 0.0
    return sum(x * y for x, y in zip(a, b)) / (norm_a * norm_b)


def reference_select(visual, query, num_keep, core_ratio, method="zspa", pooling="mean"):
    # the implementation computes in float32: start from the same float32 values
    rows = visual.to(torch.float32).double().tolist()
    n = len(rows)
    sim = [[cosine(rows[i], rows[j]) for j in range(n)] for i in range(n)]

    no_query = query is None or query.shape[0] == 0
    if no_query or method == "divprune":
        if n == 1:
            kept = [0]
        else:
            nearest = [max(sim[i][j] for j in range(n) if j != i) for i in range(n)]
            kept = [first_index(nearest, lambda x: x <= min(nearest) + TIE_TOL)]
    else:
        q = query.to(torch.float32).double().tolist()
        if pooling == "mean":
            pooled = [sum(col) / len(q) for col in zip(*q)]
        else:
            pooled = [max(col) for col in zip(*q)]
        relevance = [cosine(pooled, v) for v in rows]
        k = num_keep if method == "relevance" else math.floor(core_ratio * num_keep + 0.5)
        if k == 0:
            kept = [first_index(relevance, lambda x: x >= max(relevance) - TIE_TOL)]
        else:
            kth = sorted(relevance, reverse=True)[k - 1]
            surely = [i for i in range(n) if relevance[i] > kth + TIE_TOL]
            tied = [i for i in range(n) if i not in surely and relevance[i] >= kth - TIE_TOL]
            kept = surely + tied[: k - len(surely)]

    while len(kept) < num_keep:
        worst_match = {i: max(sim[i][j] for j in kept) for i in range(n) if i not in kept}
        best = min(worst_match.values())
        kept.append(min(i for i, m in worst_match.items() if m <= best + TIE_TOL))
    return sorted(kept)


def first_index(values, predicate) -> int:
    return next(i for i, v in enumerate(values) if predicate(v))
