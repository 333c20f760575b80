"""Hybrid retrieval: fusing a dense ranking with a BM25 ranking, as small pure functions.

    minmax(scores)                          scores of one result list scaled to [0, 1]
    convex_fuse(a_ids, a_sc, b_ids, b_sc, w) w * minmax(a) + (1 - w) * minmax(b) over the union of
                                            both lists; an item missing from a list gets 0 there
    rrf_fuse([ids_a, ids_b], k=60)          reciprocal-rank fusion: sum over lists of 1 / (k + rank)
    convex_scores(a, b, w) / rrf_scores     the same on aligned score arrays of one candidate list
                                            (a re-rank of given candidates, e.g. KDD Task 1)
    smoothed_best(grid, objective)          the grid weight whose neighbourhood scores best

The convex fusion is the recipe of OpenSearch's hybrid query with a `normalization-processor`
(`min_max` normalisation, `arithmetic_mean` combination, weights [w, 1 - w]); reciprocal-rank
fusion is Cormack, Clarke & Buettcher (SIGIR 2009) with their k = 60. Ties are broken by first
appearance (list a before list b), so every function is deterministic.

Example:
    python -c "import fusion; print(fusion.rrf_fuse([['a', 'b'], ['b', 'c']]))"
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

RRF_K = 60


def minmax(scores: Sequence[float]) -> np.ndarray:
    """(s - min) / (max - min) of one result list; all ones when every score is the same."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    lo, hi = float(s.min()), float(s.max())
    return np.ones_like(s) if hi - lo <= 1e-12 else (s - lo) / (hi - lo)


def _ranked(fused: dict, k: int | None) -> tuple[list, list]:
    items = sorted(fused.items(), key=lambda kv: -kv[1])  # stable: ties keep first appearance
    items = items[:k] if k else items
    return [i for i, _ in items], [float(s) for _, s in items]


def convex_fuse(a_ids: Sequence[Hashable], a_scores: Sequence[float], b_ids: Sequence[Hashable],
                b_scores: Sequence[float], weight: float, k: int | None = None) -> tuple[list, list]:
    """w * minmax(a) + (1 - w) * minmax(b) over the union of the two lists, best first (top k)."""
    fused: dict = {}
    for pid, s in zip(a_ids, minmax(a_scores)):
        fused[pid] = fused.get(pid, 0.0) + weight * s
    for pid, s in zip(b_ids, minmax(b_scores)):
        fused[pid] = fused.get(pid, 0.0) + (1.0 - weight) * s
    return _ranked(fused, k)


def rrf_fuse(rankings: Sequence[Sequence[Hashable]], k: int | None = None, rrf_k: int = RRF_K) -> tuple[list, list]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of 1 / (rrf_k + rank of d), rank from 1."""
    fused: dict = {}
    for ranking in rankings:
        for r, pid in enumerate(ranking, 1):
            fused[pid] = fused.get(pid, 0.0) + 1.0 / (rrf_k + r)
    return _ranked(fused, k)


def convex_scores(a: Sequence[float], b: Sequence[float], weight: float) -> np.ndarray:
    """Fused scores of one candidate list scored by both systems (aligned arrays)."""
    return weight * minmax(a) + (1.0 - weight) * minmax(b)


def rrf_scores(a: Sequence[float], b: Sequence[float], rrf_k: int = RRF_K) -> np.ndarray:
    """RRF scores of one candidate list from each system's ranking of it (higher score = rank 1)."""
    out = np.zeros(len(a))
    for s in (a, b):
        s = np.asarray(s, dtype=np.float64)
        rank = np.empty(len(s))
        rank[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
        out += 1.0 / (rrf_k + rank)
    return out


def smoothed_best(grid: Sequence[float], objective: Sequence[float]) -> float:
    """The grid point whose objective, averaged with its neighbours', is highest; ties go to the
    point nearest the middle of the grid. A small validation set makes the raw curve jagged, and a
    lone spike on it is noise: the neighbourhood average picks the broad optimum instead."""
    g, y = np.asarray(grid, dtype=np.float64), np.asarray(objective, dtype=np.float64)
    if len(g) == 0:
        raise ValueError("empty grid")
    smooth = np.array([y[max(0, i - 1):i + 2].mean() for i in range(len(y))])
    mid = (g[0] + g[-1]) / 2
    best = max(range(len(g)), key=lambda i: (round(smooth[i], 12), -abs(g[i] - mid)))
    return float(g[best])
