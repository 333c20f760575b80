"""Retrieval metrics as small pure functions (one ranked list, one query), plus `evaluate_run`
which averages them over queries. Conventions follow trec_eval: a query's relevant set is what
its judgements say, and metrics are computed on the ranked list as retrieved (cut at k).

    ranked:   sequence of item ids, best first
    relevant: set of relevant item ids (binary metrics)
    gains:    {item id: graded gain} for NDCG (e.g. ESCI E 1.0, S 0.1, C 0.01, I 0)

Example:
    python -c "import metrics; print(metrics.recall_at_k(['a','b','c'], {'b','z'}, 2))"   # 0.5
"""
from __future__ import annotations

import math
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50, 100, 200)


def recall_at_k(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    """Fraction of the relevant items found in the top k (0 when nothing is relevant)."""
    if not relevant:
        return 0.0
    return sum(1 for x in ranked[:k] if x in relevant) / len(relevant)


def precision_at_k(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    """Fraction of the top k that is relevant (k in the denominator, as trec_eval's P_k)."""
    return sum(1 for x in ranked[:k] if x in relevant) / k


def reciprocal_rank(ranked: Sequence[Hashable], relevant: set, k: int | None = None) -> float:
    """1 / rank of the first relevant item (within the top k when given), else 0."""
    for i, x in enumerate(ranked[:k] if k else ranked):
        if x in relevant:
            return 1.0 / (i + 1)
    return 0.0


def dcg_at_k(ranked: Sequence[Hashable], gains: Mapping[Hashable, float], k: int) -> float:
    """Sum of gain / log2(rank + 1) over the top k (linear gains, Järvelin & Kekäläinen)."""
    return sum(gains.get(x, 0.0) / math.log2(i + 2) for i, x in enumerate(ranked[:k]))


def ndcg_at_k(ranked: Sequence[Hashable], gains: Mapping[Hashable, float], k: int) -> float:
    """DCG@k divided by the DCG@k of the ideal ordering of all judged gains (0 if all gains are 0)."""
    ideal = sorted((g for g in gains.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg_at_k(ranked, gains, k) / idcg if idcg > 0 else 0.0


def average_precision(ranked: Sequence[Hashable], relevant: set, k: int | None = None) -> float:
    """Mean of precision at each relevant item's rank, over all relevant items (trec_eval's AP)."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, x in enumerate(ranked[:k] if k else ranked):
        if x in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant)


def kdd_task1_ndcg(scores: Mapping[Hashable, float], labels: Mapping[Hashable, str],
                   gains: Mapping[str, float] | None = None) -> float:
    """KDD Cup 2022 ESCI Task 1: nDCG of one query's judged products re-ranked by the model's score
    (whole list, no cut-off; gains E 1.0, S 0.1, C 0.01, I 0; ties keep the judged order)."""
    gains = gains or {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}
    items = [i for i in labels if i in scores]
    if not items:
        return 0.0
    order = sorted(range(len(items)), key=lambda j: -scores[items[j]])  # stable: ties keep judged order
    g = {i: gains.get(labels[i], 0.0) for i in items}
    return ndcg_at_k([items[j] for j in order], g, len(items))


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(b - a) over queries resampled with replacement (a and b are
    two systems' per-query scores on the same queries, in the same order)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(d) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for i in range(0, n, 256):  # chunks keep memory bounded for many queries
        k = min(256, n - i)
        means[i:i + k] = d[rng.integers(0, len(d), size=(k, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate_run(run: Mapping[Hashable, Sequence[Hashable]], qrels: Mapping[Hashable, Mapping[Hashable, str]],
                 relevant_labels: Iterable[str] = ("E",), gains: Mapping[str, float] | None = None,
                 ks: Sequence[int] = DEFAULT_KS) -> tuple[dict, dict]:
    """Mean metrics over the queries of `qrels` that have a relevant item, and per-query arrays.

    run: {query: ranked item ids}; qrels: {query: {item: ESCI label}}. Queries with no relevant
    item are skipped (their recall is undefined), as trec_eval does."""
    rel_labels = set(relevant_labels)
    gains = gains or {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}
    per: dict[str, list] = {"query": []}
    for q, judged in qrels.items():
        relevant = {i for i, lab in judged.items() if lab in rel_labels}
        if not relevant:
            continue
        ranked = list(run.get(q, ()))
        g = {i: gains.get(lab, 0.0) for i, lab in judged.items()}
        per["query"].append(q)
        for k in ks:
            per.setdefault(f"recall@{k}", []).append(recall_at_k(ranked, relevant, k))
            per.setdefault(f"precision@{k}", []).append(precision_at_k(ranked, relevant, k))
            per.setdefault(f"ndcg@{k}", []).append(ndcg_at_k(ranked, g, k))
        per.setdefault("mrr", []).append(reciprocal_rank(ranked, relevant))
        per.setdefault("map", []).append(average_precision(ranked, relevant))
    means = {m: float(np.mean(v)) if v else 0.0 for m, v in per.items() if m != "query"}
    means["queries"] = len(per["query"])
    return means, {m: np.asarray(v) for m, v in per.items()}
