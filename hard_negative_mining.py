"""Phase 5: mine hard negatives for the training queries with a model (iteratively, per stage).

Reads: --checkpoint (default checkpoints/stage1.pt) or --baseline; data/products_clean.parquet,
data/training_pairs.parquet (the training queries), data/ground_truth.parquet (judged labels);
data/indices_bm25 for --mine-from bm25|hybrid and --lexical-mismatch.
Writes: --output (default data/hard_negatives_stage2.parquet) in the training-pair schema with
neg_type "hard", plus round, score, rank, pos_score; next to it <output stem>_positive_ranks.parquet
(every judged E/S/C product of those queries: the model's score and rank in the whole catalog, -1
beyond --top-k; stage 3 trains only on positives ranked beyond its --focus-rank) and a stats JSON
(<output stem>_stats.json: queries mined, candidates dropped as judged positives / by margin /
by range, histogram of negative scores relative to the query's positive score).

For each training query: retrieve the top --top-k candidates (--mine-from dense: the model's exact
inner product over the cached catalog embeddings, in query batches; bm25: BM25's ranking over the
index in data/indices_bm25, lexical near-misses; hybrid: the two fused, w = 0.5), drop every product judged E/S/C for the query, skip
ranks before --skip-top, drop candidates scoring above (1 - --false-negative-margin) x the mean score of the
query's judged positives (likely unjudged positives: false negatives; with --lexical-mismatch R, such a
candidate is kept when its BM25 score is below R x that of every judged E/S positive of the query: it
matches the query's words worse, so it is likely another size or type), keep I-judged or unjudged
products, drop candidates whose product embedding is a near-duplicate of one of the query's judged
E/S positives (cosine >= --near-duplicate-cosine: another size or colour of a relevant product,
most likely relevant too), and take the best --num-negatives. Deterministic for a given model and data.

Example (CPU, tiny sample):
    python hard_negative_mining.py --baseline --data-dir /tmp/d --output /tmp/d/hard_negatives_stage2.parquet
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from embeddings import build_index, catalog_embeddings, search
from two_tower_model import add_model_source_args, load_model_from_args
from cli import (FRACTION, NONNEG_INT, POSITIVE_INT, add_alias, add_common_args, args_to_config, float_range,
                 progress, refuse_overwrite, run_cli)
from fileio import load_catalog, load_prepared, parquet_writer, require_writable, write_json, write_parquet
from paths import DEFAULT_CHECKPOINT_DIR, bm25_index_dir, hard_negatives_path, positive_ranks_path, stage_checkpoint
from utils import Timer, is_main_process, log, peak_rss_mb

HARD_SCHEMA = pa.schema([("query_id", pa.int64()), ("query", pa.string()), ("product_id", pa.string()),
                         ("product_text", pa.string()), ("label", pa.float32()), ("weight", pa.float32()),
                         ("esci_label", pa.string()), ("neg_type", pa.string()), ("split", pa.string()),
                         ("stage", pa.int8()), ("round", pa.int16()), ("score", pa.float32()),
                         ("rank", pa.int32()), ("pos_score", pa.float32())])
HIST_BINS = [-1.0, 0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 10.0]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(p, stage_checkpoint(DEFAULT_CHECKPOINT_DIR, 1))
    p.add_argument("--output", type=Path, default=None, help="default: DATA_DIR/hard_negatives_stage2.parquet")
    p.add_argument("--top-k", type=POSITIVE_INT, default=100, help="candidates retrieved per query")
    p.add_argument("--num-negatives", type=POSITIVE_INT, default=15, help="hard negatives kept per query")
    p.add_argument("--skip-top", type=NONNEG_INT, default=0, help="ignore the first N ranks (range start)")
    p.add_argument("--false-negative-margin", type=FRACTION, default=0.05, metavar="M",
                   help="drop candidates scoring above (1 - M) x the query's mean positive score (likely "
                        "unjudged positives)")
    add_alias(p, "--margin", "--false-negative-margin")
    p.add_argument("--lexical-mismatch", type=float_range(0.0, 1.0), default=None, metavar="R",
                   help="keep a candidate the margin guard would drop when its BM25 score is below R x the "
                        "lowest BM25 score of the query's judged E/S positives: it matches the query's words "
                        "worse than every judged positive (another size, type or brand), so it is a hard "
                        "negative rather than a likely unjudged positive (needs the BM25 index; default: off)")
    p.add_argument("--near-duplicate-cosine", type=float_range(0.0, 1.0), default=None, metavar="C",
                   help="drop candidates whose embedding has cosine >= C with one of the query's judged E/S "
                        "positives (likely unjudged variants of a relevant product; default: off)")
    p.add_argument("--mine-from", choices=["dense", "bm25", "hybrid"], default="dense",
                   help="whose ranking the candidates come from: the model's (default), BM25's (lexical near-misses; "
                        "needs the BM25 index) or both fused; the margin guard always uses the model's scores")
    p.add_argument("--bm25-index-dir", type=Path, default=None, help="for --mine-from bm25|hybrid (default: "
                   "DATA_DIR/indices_bm25)")
    p.add_argument("--round", type=POSITIVE_INT, default=None, help="mining round (default: from the checkpoint's stage)")
    p.add_argument("--query-batch-size", type=POSITIVE_INT, default=1024, help="queries per search batch")
    add_alias(p, "--query-batch", "--query-batch-size")
    add_common_args(p, overwrite="--output")
    return p.parse_args(argv)


def candidate_source(source: str, index, q_emb: np.ndarray, emb: np.ndarray, top_k: int, query_texts=None,
                     bm25=None):
    """f(lo, hi) -> (model scores (b, k), catalog rows (b, k), -1 padded): the candidates of queries
    lo..hi in the order they are considered. dense: the model's top k; bm25: BM25's top k; hybrid:
    the model's and BM25's top k fused (fusion.convex_fuse, w = 0.5). Scores are always the model's
    (q . p), so the margin guard means the same whatever ranks the candidates."""
    if source == "dense":
        return lambda lo, hi: search(index, q_emb[lo:hi], top_k)
    import fusion

    def lexical(lo, hi):
        hi = min(hi, len(q_emb))
        d_sc, d_rows = search(index, q_emb[lo:hi], top_k) if source == "hybrid" else (None, None)
        rows = np.full((hi - lo, top_k), -1, np.int64)
        scores = np.full((hi - lo, top_k), -np.inf, np.float32)
        for j, (b_rows, b_sc) in enumerate(bm25.search(list(query_texts[lo:hi]), top_k)):
            order = b_rows
            if source == "hybrid":
                keep = d_rows[j] >= 0
                order = np.asarray(fusion.convex_fuse(d_rows[j][keep].tolist(), d_sc[j][keep].tolist(),
                                                      b_rows.tolist(), b_sc.tolist(), 0.5, top_k)[0], np.int64)
            rows[j, :len(order)] = order
            scores[j, :len(order)] = np.asarray(emb[order]) @ q_emb[lo + j] if len(order) else []
        return scores, rows
    return lexical


def mine(q_emb: np.ndarray, query_ids: np.ndarray, index, cat_ids: np.ndarray, judged_pos: dict, pos_score: np.ndarray,
         top_k: int, num_negatives: int, skip_top: int, margin: float, batch: int = 1024,
         near_dup: float | None = None, emb: np.ndarray | None = None, pos_rows: dict | None = None,
         candidates=None, positive_hits: dict | None = None, lexical=None, lexical_mismatch: float | None = None):
    """Per query: the kept (catalog row, score, rank) lists and drop counters. With near_dup, a
    candidate whose embedding (emb) has cosine >= near_dup with one of the query's positive rows
    (pos_rows: query position -> catalog rows) is dropped too. candidates(lo, hi) -> (scores, rows)
    supplies each query batch's candidates (candidate_source; default: the index's exact top k).
    positive_hits, when given, receives (query position, catalog row) -> rank (1-based) of every
    judged positive among the candidates. With lexical_mismatch R (needs pos_rows), lexical(query
    position) -> the query's BM25 score of every catalog row, or None when no query term is indexed:
    a candidate above the margin is kept after all when its BM25 score is below R x the lowest of
    the query's positive rows (counted as "kept_lexical_mismatch")."""
    drops = {"judged_positive": 0, "margin": 0, "range": 0, "near_duplicate": 0, "beyond_num_negatives": 0}
    rescued = 0
    kept_q, kept_r, kept_s, kept_rank = [], [], [], []
    candidates = candidates or candidate_source("dense", index, q_emb, emb, top_k)
    for s in progress(range(0, len(q_emb), batch), desc="mine", unit="batch", disable=len(q_emb) < 5 * batch):
        scores, rows = candidates(s, s + batch)
        for j in range(len(rows)):
            qi = s + j
            pos = judged_pos.get(query_ids[qi], ())
            limit = (1.0 - margin) * pos_score[qi] if np.isfinite(pos_score[qi]) else np.inf
            dup = np.zeros(len(rows[j]), dtype=bool)
            if near_dup is not None and pos_rows is not None and len(pos_rows.get(qi, ())):
                ok = rows[j] >= 0
                sim = np.asarray(emb[rows[j][ok]]) @ np.asarray(emb[pos_rows[qi]]).T  # (k, n_pos)
                dup[np.flatnonzero(ok)] = sim.max(1) >= near_dup
            mismatch = np.zeros(len(rows[j]), dtype=bool)
            bm = lexical(qi) if lexical_mismatch is not None and len(pos_rows.get(qi, ())) else None
            if bm is not None:  # the query's BM25 scores over the whole catalog, computed once
                floor = lexical_mismatch * float(bm[pos_rows[qi]].min())  # 0 when a positive shares no word
                ok = rows[j] >= 0
                mismatch[np.flatnonzero(ok)] = bm[rows[j][ok]] < floor
            n = 0
            for rank, (r, sc) in enumerate(zip(rows[j], scores[j])):
                if r < 0:
                    break
                if cat_ids[r] in pos:
                    drops["judged_positive"] += 1
                    if positive_hits is not None:
                        positive_hits[(qi, int(r))] = rank + 1
                elif rank < skip_top:
                    drops["range"] += 1
                elif sc > limit and not mismatch[rank]:
                    drops["margin"] += 1
                elif dup[rank]:
                    drops["near_duplicate"] += 1
                elif n >= num_negatives:
                    drops["beyond_num_negatives"] += 1
                else:
                    kept_q.append(qi); kept_r.append(r); kept_s.append(sc); kept_rank.append(rank + 1)
                    n += 1
                    rescued += bool(sc > limit)
    if lexical_mismatch is not None:
        drops["kept_lexical_mismatch"] = rescued
    return np.asarray(kept_q, dtype=np.int64), np.asarray(kept_r, dtype=np.int64), \
        np.asarray(kept_s, dtype=np.float32), np.asarray(kept_rank, dtype=np.int32), drops


def dense_positive_hits(index, q_emb: np.ndarray, judged_pos: dict, query_ids: np.ndarray, cat_ids: np.ndarray,
                        top_k: int, batch: int = 1024) -> dict:
    """(query position, catalog row) -> 1-based rank of each judged positive within the model's own
    top_k (for --mine-from bm25|hybrid, whose candidates are not the model's ranking)."""
    hits = {}
    for s in range(0, len(q_emb), batch):
        _, rows = search(index, q_emb[s:s + batch], top_k)
        for j, row in enumerate(rows):
            pos = judged_pos.get(query_ids[s + j], ())
            for rank, r in enumerate(row):
                if r >= 0 and cat_ids[r] in pos:
                    hits[(s + j, int(r))] = rank + 1
    return hits


def positive_rank_table(judged: pd.DataFrame, query_ids: np.ndarray, q_emb: np.ndarray, emb: np.ndarray,
                        row_of: pd.Series, hits: dict, top_k: int) -> pd.DataFrame:
    """One row per judged E/S/C positive (in the catalog) of the mined queries: its label, the
    model's score and its rank in the model's ranking of the whole catalog (1-based; -1 = beyond
    the mined --top-k, which each row repeats). Stage 3 reads it for --focus-rank (train_data.StageData)."""
    j = judged[judged["query_id"].isin(query_ids)]
    rows = row_of.reindex(j["product_id"].to_numpy()).to_numpy()
    ok = ~np.isnan(rows)
    j, rows = j[ok], rows[ok].astype(np.int64)
    qi = pd.Series(np.arange(len(query_ids)), index=query_ids).reindex(j["query_id"].to_numpy()).to_numpy()
    score = np.einsum("nd,nd->n", q_emb[qi], np.asarray(emb[rows])) if len(rows) else np.zeros(0)
    rank = np.fromiter((hits.get((int(q), int(r)), -1) for q, r in zip(qi, rows)), dtype=np.int32, count=len(rows))
    return pd.DataFrame({"query_id": j["query_id"].to_numpy().astype(np.int64),
                         "product_id": j["product_id"].to_numpy().astype(str),
                         "esci_label": j["esci_label"].to_numpy().astype(str),
                         "rank": rank, "score": score.astype(np.float32),
                         "top_k": np.full(len(rows), top_k, np.int32)})


def main(args: argparse.Namespace) -> dict:
    out = args.output or hard_negatives_path(args.data_dir, 2)
    refuse_overwrite(args, out)
    if is_main_process():  # before the catalog encode, not after it
        require_writable(out.parent, "--output")
        require_writable(args.data_dir, "--data-dir (embedding cache)")
    with Timer() as total:
        model, info = load_model_from_args(args)
        products = load_catalog(args.data_dir)
        queries = load_prepared(args.data_dir, "training_pairs", ["query_id", "query"]).drop_duplicates("query_id")
        gt = load_prepared(args.data_dir, "ground_truth")
        emb, _ = catalog_embeddings(model, products, args.data_dir, batch_size=args.encode_batch_size,
                                    backend=args.backend, keep_caches=args.keep_caches)
        if not is_main_process():
            return {}
        cat_ids = products["product_id"].to_numpy()
        judged = gt[gt["esci_label"].isin(["E", "S", "C"])]
        judged_pos = {q: set(g) for q, g in judged.groupby("query_id")["product_id"]}
        qids = queries["query_id"].to_numpy()
        q_emb = model.encode_queries(queries["query"].tolist(), show_progress=len(queries) > 10_000)
        # each query's mean positive score (E/S judged positives in the catalog) for the margin guard
        row_of = pd.Series(np.arange(len(products)), index=cat_ids)
        es = gt[gt["esci_label"].isin(["E", "S"]) & gt["query_id"].isin(qids)]
        pr = row_of.reindex(es["product_id"].to_numpy()).to_numpy()
        ok = ~np.isnan(pr)
        es = es[ok].assign(row=pr[ok].astype(np.int64))
        qpos = pd.Series(np.arange(len(qids)), index=qids)
        qi = qpos.reindex(es["query_id"].to_numpy()).to_numpy()
        s_pos = np.einsum("nd,nd->n", q_emb[qi], np.asarray(emb[es["row"].to_numpy()]))
        pos_score = np.full(len(qids), np.nan, dtype=np.float32)
        mean = pd.Series(s_pos).groupby(qi).mean()
        pos_score[mean.index.to_numpy()] = mean.to_numpy()
        index = build_index(emb, "flat")
        bm25 = None
        if args.mine_from != "dense" or args.lexical_mismatch is not None:
            from lexical import Bm25Index
            bm25 = Bm25Index.load(args.bm25_index_dir or bm25_index_dir(args.data_dir), products)
        source = candidate_source(args.mine_from, index, q_emb, emb, args.top_k, queries["query"].to_numpy(), bm25)
        pos_rows = {int(k): g.to_numpy() for k, g in pd.Series(es["row"].to_numpy()).groupby(qi)}
        hits = {} if args.mine_from == "dense" else None  # the dense candidates are the model's ranking
        q_texts = queries["query"].to_numpy()
        lexical = (lambda qi: bm25.scores(q_texts[qi])) if bm25 is not None else None
        kq, kr, ks, krank, drops = mine(q_emb, qids, index, cat_ids, judged_pos, pos_score, args.top_k,
                                        args.num_negatives, args.skip_top, args.false_negative_margin,
                                        args.query_batch_size, args.near_duplicate_cosine, emb, pos_rows, source,
                                        positive_hits=hits, lexical=lexical, lexical_mismatch=args.lexical_mismatch)
        if hits is None:
            hits = dense_positive_hits(index, q_emb, judged_pos, qids, cat_ids, args.top_k, args.query_batch_size)
        ranks = positive_rank_table(judged, qids, q_emb, emb, row_of, hits, args.top_k)
        labels = gt.set_index(["query_id", "product_id"])["esci_label"]
        key = pd.MultiIndex.from_arrays([qids[kq], cat_ids[kr]])
        esci = labels.reindex(key).to_numpy()
        rnd = args.round or int(model.progress.get("stage", 0)) or 1  # mining round = the model's stage
        table = pa.Table.from_pydict({
            "query_id": qids[kq].astype(np.int64), "query": queries["query"].to_numpy()[kq],
            "product_id": cat_ids[kr], "product_text": products["product_text"].to_numpy()[kr],
            "label": np.zeros(len(kq), np.float32), "weight": np.ones(len(kq), np.float32),
            "esci_label": np.where(pd.isna(esci), None, esci), "neg_type": np.full(len(kq), "hard"),
            "split": np.full(len(kq), "train"), "stage": np.full(len(kq), 2, np.int8),
            "round": np.full(len(kq), rnd, np.int16), "score": ks, "rank": krank,
            "pos_score": pos_score[kq]}, schema=HARD_SCHEMA)
        with parquet_writer(out, HARD_SCHEMA) as w:
            w.write_table(table)
        write_parquet(positive_ranks_path(out), ranks)  # after the negatives: with both, the step is done
    ranked = ranks["rank"].to_numpy()
    rel = ks / np.where(pos_score[kq] > 0, pos_score[kq], np.nan)
    hist, _ = np.histogram(rel[np.isfinite(rel)], bins=HIST_BINS)
    stats = {"output": str(out), "model": info, "round": rnd, "mine_from": args.mine_from, "queries": len(qids),
             "queries_with_negatives": int(len(np.unique(kq))), "negatives": int(len(kq)),
             "negatives_per_query": round(len(kq) / max(len(qids), 1), 2),
             "negatives_judged_I": int((esci == "I").sum()), "negatives_unjudged": int(pd.isna(esci).sum()),
             "dropped": drops, "score_over_pos_score_histogram": {
                 f"[{a},{b})": int(h) for a, b, h in zip(HIST_BINS[:-1], HIST_BINS[1:], hist)},
             "mean_negative_score": round(float(ks.mean()), 4) if len(ks) else None,
             "mean_positive_score": round(float(np.nanmean(pos_score)), 4) if np.isfinite(pos_score).any() else None,
             "positive_ranks": {"file": str(positive_ranks_path(out)), "positives": len(ranks),
                                "top_k": args.top_k, **{f"within_{k}": int(((ranked >= 1) & (ranked <= k)).sum())
                                                        for k in (1, 10, args.top_k)}},
             "seconds": round(total.seconds, 1), "peak_rss_mb": round(peak_rss_mb()),
             "config": args_to_config(args)}
    write_json(out.with_name(out.stem + "_stats.json"), stats)
    log.info("mined %s hard negatives for %s queries (%.1f/query; %s I-judged, %s unjudged); dropped %s -> %s",
             f"{len(kq):,}", f"{len(qids):,}", stats["negatives_per_query"], stats["negatives_judged_I"],
             stats["negatives_unjudged"], drops, out)
    return stats


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
