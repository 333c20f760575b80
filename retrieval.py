"""Every retrieval system the suite evaluates, benchmarks and demos, in one place.

Runs over a set of queries (evaluate_trained_model.py, bench/bench_quality.py):
    dense_run(model, index, ids, queries, k, cands)   a two-tower model over a FAISS index
    bm25_run(bm25, queries, k, cands)                 lexical.Bm25Index
    fused_run(dense, lexical, method, weight, k)      hybrid: convex score fusion or RRF (fusion.py)
    choose_weight(dense, lexical, qrels, cands)       the convex weight, chosen on validation queries
    run_metrics(run, qrels, cands)                    means and per-query arrays, KDD Task 1 included
A `Run` holds, per query, the ranked product ids with their scores and the scores the system gives
the query's judged products (`cands`): the KDD Cup 2022 Task 1 re-rank of exactly those products.

One query at a time (demo_trained_model.py, the latency figures of the report):
    DenseSearcher, Bm25Searcher, HybridSearcher   .search(query, k) -> (product ids, scores)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

import fusion
from embeddings import load_index, search
from metrics import evaluate_run, kdd_task1_ndcg, paired_bootstrap_ci
from utils import UserError, query_hash_unit

WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # weight of the dense system; 0 = BM25 only
HYBRID_DEPTH = 200  # each system's list that is fused (the report's top-k)
PRIOR_WEIGHT = 0.5  # the hybrid's dense weight unless validation confirms a better one out of fold


@dataclass
class Run:
    """A system's results for a set of queries (all dicts keyed by query id)."""
    ids: dict = field(default_factory=dict)      # ranked product ids, best first
    scores: dict = field(default_factory=dict)   # their scores
    judged: dict = field(default_factory=dict)   # scores of the query's judged products (cands order)


def judged_candidates(qrels: dict, row_of: pd.Series) -> dict:
    """Per query: (product ids, catalog rows) of its judged products that are in the catalog."""
    out = {}
    for q, judged in qrels.items():
        rows = row_of.reindex(list(judged)).dropna().astype(np.int64)
        out[q] = (rows.index.tolist(), rows.to_numpy())
    return out


def dense_run(model, index, ids: np.ndarray, queries: pd.DataFrame, k: int, cands: dict | None = None,
              vectors=None) -> Run:
    """Encode the queries, search the index; judged products scored by q . p, their vectors read
    from the index (`index.reconstruct_batch`) or from `vectors(rows)` (no encode either way)."""
    q_emb = model.encode_queries(queries["query"].tolist())
    scores, rows = search(index, q_emb, k)
    run = Run()
    vec = vectors or index.reconstruct_batch
    for i, q in enumerate(queries["query_id"]):
        keep = rows[i] >= 0
        run.ids[q], run.scores[q] = ids[rows[i][keep]].tolist(), scores[i][keep].tolist()
        if cands is not None:
            _, crow = cands.get(q, ([], np.zeros(0, np.int64)))
            run.judged[q] = np.asarray(vec(crow)) @ q_emb[i] if len(crow) else np.zeros(0)
    return run


def bm25_run(bm25, queries: pd.DataFrame, k: int, cands: dict | None = None) -> Run:
    """BM25 top k per query; judged products scored by BM25 (0 when no term matches)."""
    run = Run()
    hits = bm25.search(queries["query"].tolist(), k, show_progress=len(queries) > 5000)
    for (q, text), (rows, sc) in zip(zip(queries["query_id"], queries["query"]), hits):
        run.ids[q], run.scores[q] = bm25.ids[rows].tolist(), sc.tolist()
        if cands is not None:
            _, crow = cands.get(q, ([], np.zeros(0, np.int64)))
            run.judged[q] = bm25.score_rows(text, crow)
    return run


def fused_run(dense: Run, lexical: Run, method: str = "convex", weight: float = 0.5, k: int = HYBRID_DEPTH,
              rrf_k: int = fusion.RRF_K) -> Run:
    """The hybrid of two runs over the same queries: convex fusion with the dense weight, or RRF."""
    run = Run()
    for q in dense.ids:
        if method == "convex":
            run.ids[q], run.scores[q] = fusion.convex_fuse(dense.ids[q], dense.scores[q], lexical.ids[q],
                                                           lexical.scores[q], weight, k)
        else:
            run.ids[q], run.scores[q] = fusion.rrf_fuse([dense.ids[q], lexical.ids[q]], k, rrf_k)
        if q in dense.judged:
            a, b = dense.judged[q], lexical.judged[q]
            run.judged[q] = fusion.convex_scores(a, b, weight) if method == "convex" else fusion.rrf_scores(a, b, rrf_k)
    return run


def run_metrics(run: Run, qrels: dict, cands: dict | None, relevant=("E",), gains=None,
                ks: Sequence[int] = (10, 50, 200), query_order: Sequence | None = None) -> tuple[dict, dict]:
    """evaluate_run's means and per-query arrays, plus kdd_task1_ndcg: the judged re-rank's nDCG per
    query over every query in `query_order` (default: qrels order), as the KDD Cup averages it."""
    means, per = evaluate_run(run.ids, qrels, relevant, gains, ks)
    if cands is not None:
        order = list(query_order if query_order is not None else qrels)
        kdd = np.zeros(len(order))
        for i, q in enumerate(order):
            pids = cands.get(q, ([], None))[0]
            if pids:
                kdd[i] = kdd_task1_ndcg(dict(zip(pids, np.asarray(run.judged[q]).tolist())), qrels[q])
        means["kdd_task1_ndcg"] = float(kdd.mean()) if len(kdd) else 0.0
        per["kdd_task1_ndcg"] = kdd
    return means, per


def choose_weight(dense: Run, lexical: Run, qrels: dict, relevant=("E",), gains=None,
                  grid: Sequence[float] = WEIGHT_GRID, prior: float = PRIOR_WEIGHT) -> tuple[float, dict, dict]:
    """The dense weight of the convex fusion, chosen on the validation queries `qrels`: the grid
    weight whose mean Recall@10 + NDCG@10, smoothed over neighbouring weights (fusion.smoothed_best),
    is highest, if choosing it that way beats the equal weight `prior` on queries it was not chosen
    on (`gated_weight`); otherwise `prior`. A few hundred validation queries give a flat, jagged
    curve whose peak moves from run to run, and a weight picked from noise costs the fused system
    more on new queries than the equal weight does (docs/experiments.md, "Hybrid weight").
    Returns (weight, {weight: [recall@10, ndcg@10]}, {"best": smoothed best, "fold_best": the two
    halves' choices, "ci": [lo, hi] of the out-of-fold gain over `prior`}); `prior` and empty dicts
    when there are no validation queries."""
    table, objective, queries = {}, [], None
    if not any(lab in relevant for j in qrels.values() for lab in j.values()):
        return prior, table, {}
    for w in grid:
        m, per = evaluate_run(fused_run(dense, lexical, "convex", w).ids, qrels, relevant, gains, (10,))
        table[f"{w:.2f}"] = [round(m["recall@10"], 4), round(m["ndcg@10"], 4)]
        objective.append(np.asarray(per["recall@10"]) + np.asarray(per["ndcg@10"]))
        queries = per["query"]
    if not np.any(objective):
        return prior, table, {}
    # halves by a bit of the query-id hash that the train/test re-split (a threshold on the same
    # hash) does not decide, so both halves stay about equal after `--resplit-queries`
    fold = (query_hash_unit(queries) * 1024).astype(np.int64) % 2
    w, why = gated_weight(grid, np.vstack(objective), fold, prior)
    return w, table, why


def gated_weight(grid: Sequence[float], objective: np.ndarray, fold: np.ndarray,
                 prior: float = PRIOR_WEIGHT) -> tuple[float, dict]:
    """The smoothed peak of `objective` (n_weights, n_queries: each query's score at each grid
    weight), taken only if the choice is confirmed on queries it was not made on: each half of the
    queries (`fold`, 0 or 1) is scored at the peak chosen on the other half, and the paired-bootstrap
    95% CI of that out-of-fold gain over `prior` must lie above 0. A CI of the peak's gain measured
    on the queries that chose it is biased upwards (the peak is the grid's luckiest point there):
    on Home Depot it passed for a weight that then lost 0.010 Recall@10 on the test queries.
    Returns (weight, {"best", "fold_best", "ci"}); no gate when `prior` is off the grid or is the peak."""
    g = [round(float(x), 6) for x in grid]
    best = fusion.smoothed_best(grid, objective.mean(1))
    if round(prior, 6) not in g or round(best, 6) == round(prior, 6):
        return best, {"best": best}
    halves = [fold == f for f in (0, 1)]
    if not all(h.any() for h in halves):  # one half empty: nothing to confirm on
        return prior, {"best": best, "fold_best": [], "ci": []}
    chosen = np.empty(objective.shape[1])
    fold_best = []
    for f, here in enumerate(halves):
        b = fusion.smoothed_best(grid, objective[:, ~here].mean(1))  # chosen on the other half
        fold_best.append(b)
        chosen[here] = objective[g.index(round(b, 6)), here]
    lo, hi = paired_bootstrap_ci(objective[g.index(round(prior, 6))], chosen)
    return (best if lo > 0 else prior), {"best": best, "fold_best": fold_best, "ci": [round(lo, 4), round(hi, 4)]}


# ---------------------------------------------------------------------------------------------
# One query at a time
# ---------------------------------------------------------------------------------------------
class DenseSearcher:
    """A model with its indices (flat and, when built, hnsw)."""

    def __init__(self, name: str, model, index_dir: Path, products: pd.DataFrame | None):
        self.name, self.model, self.indices = name, model, {}
        for kind in ("flat", "hnsw"):
            try:
                self.indices[kind], self.ids, _ = load_index(index_dir, kind, model=model,
                                                             products=products if kind == "flat" else None)
            except UserError:
                if kind == "flat":
                    raise
        self.last_embedding: np.ndarray | None = None

    def search(self, query: str, k: int, kind: str = "flat") -> tuple[list, list]:
        q = self.model.encode_queries([query])
        index = self.indices.get(kind) or self.indices["flat"]
        scores, rows = index.search(q, min(k, index.ntotal))
        keep = rows[0] >= 0
        self.last_embedding = q[0]
        return self.ids[rows[0][keep]].tolist(), scores[0][keep].tolist()


class Bm25Searcher:
    name = "bm25"

    def __init__(self, bm25):
        self.bm25 = bm25

    def search(self, query: str, k: int, kind: str = "flat") -> tuple[list, list]:
        rows, sc = self.bm25.search([query], k)[0]
        return self.bm25.ids[rows].tolist(), sc.tolist()


class HybridSearcher:
    """Dense + BM25, each searched to `depth`, fused (convex with the dense `weight`, or RRF)."""

    def __init__(self, dense: DenseSearcher, bm25: Bm25Searcher, weight: float = 0.5, method: str = "convex",
                 depth: int = HYBRID_DEPTH):
        self.dense, self.bm25, self.weight, self.method, self.depth = dense, bm25, weight, method, depth
        self.name = f"hybrid({dense.name}+bm25)"

    def search(self, query: str, k: int, kind: str = "flat") -> tuple[list, list]:
        d_ids, d_sc = self.dense.search(query, max(k, self.depth), kind)
        b_ids, b_sc = self.bm25.search(query, max(k, self.depth))
        if self.method == "convex":
            return fusion.convex_fuse(d_ids, d_sc, b_ids, b_sc, self.weight, k)
        return fusion.rrf_fuse([d_ids, b_ids], k)
