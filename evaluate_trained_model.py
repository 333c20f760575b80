"""Phase 7: evaluate the trained system against the pretrained baseline on the test queries.

Reads: the trained model (--checkpoint, default checkpoints/best_model.pt) with its index
(--index-dir, default data/indices) and the baseline model (--base-model) with
data/indices_baseline (both built by reindex_with_trained_model.py; a missing one is reported with
the command that builds it); data/ground_truth.parquet (split test)
and data/products_clean.parquet. Every test query is retrieved from the whole catalog.
Writes (--out-dir, default data/eval):
  report.json   {"baseline": {...}, "trained": {...}, "delta": {...}, "relative": {...}, "ci95": {...},
                 "per_query": {...}, "speed": {...}, "files": {name: sha256}}; metrics as flat numbers: recall@K, precision@K,
                 ndcg@K (ESCI gains E 1, S 0.1, C 0.01), mrr, map, K = 1 5 10 20 50 100 200, and
                 kdd_task1_ndcg: the KDD Cup 2022 Task 1 number (each query's judged products
                 re-ranked by the model, nDCG with gains E 1, S 0.1, C 0.01, I 0, over all queries)
  report.md     comparison table; recall_at_k.png, ndcg10_per_query_delta.png
  baseline.run, trained.run (TREC, top 200), qrels.txt (E 3, S 2, C 1, I 0)
report.json is written last and lists the other files with their sha256 (run_workflow.sh checks
them): a run killed part-way leaves no report.json, so nothing reads a half-finished evaluation.

Example (after the workflow's reindex step):
    python evaluate_trained_model.py --data-dir data --checkpoint checkpoints/best_model.pt
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from embeddings import load_index, search
from metrics import DEFAULT_KS, evaluate_run, kdd_task1_ndcg
from two_tower_model import TwoTowerModel
from utils import (ESCI_GAINS, NONNEG_INT, POSITIVE_INT, Timer, UserError, add_common_args, add_comparison_args,
                   args_to_config, atomic_path, eval_dir, file_sha256, get_device, index_dir, load_catalog,
                   load_prepared, log, peak_rss_mb, refuse_overwrite, require_writable, run_cli, write_json)

TREC_GRADE = {"E": 3, "S": 2, "C": 1, "I": 0}
# written before report.json, which lists them with their sha256: report.json is the completion marker
REPORT_FILES = ("baseline.run", "trained.run", "qrels.txt", "report.md", "recall_at_k.png", "ndcg10_per_query_delta.png")
HEADLINE = ["recall@10", "recall@50", "recall@200", "ndcg@10", "mrr", "map", "precision@10", "kdd_task1_ndcg"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_args(p)
    p.add_argument("--index", choices=["flat", "hnsw"], default="flat", help="index used for the metrics")
    p.add_argument("--relevant", choices=["E", "ES"], default="E", help="labels that count as relevant")
    p.add_argument("--split", default="test")
    p.add_argument("--top-k", type=POSITIVE_INT, default=200)
    p.add_argument("--bootstrap", type=POSITIVE_INT, default=2000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--latency-queries", type=NONNEG_INT, default=200, help="queries timed one by one")
    p.add_argument("--out-dir", type=Path, default=None, help="default: DATA_DIR/eval")
    add_common_args(p, overwrite="the report in --out-dir")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------
def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(b - a) over queries resampled with replacement."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(d) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for i in range(0, n, 256):  # chunks keep memory bounded for 9k queries
        k = min(256, n - i)
        means[i:i + k] = d[rng.integers(0, len(d), size=(k, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def trec_run_lines(run: dict, scores: dict, tag: str) -> list[str]:
    return [f"{q} Q0 {pid} {r + 1} {s:.6f} {tag}" for q in run for r, (pid, s) in enumerate(zip(run[q], scores[q]))]


def trec_qrels_lines(qrels: dict) -> list[str]:
    return [f"{q} 0 {pid} {TREC_GRADE[lab]}" for q, j in qrels.items() for pid, lab in j.items()]


def judged_rerank_ndcg(q_emb: np.ndarray, query_ids, vectors: Callable[[np.ndarray], np.ndarray],
                       row_of: pd.Series, qrels: dict) -> np.ndarray:
    """KDD Task 1 nDCG per query (in `query_ids` order): its judged catalog products scored by
    q . p and re-ranked; q_emb (n, d) aligned with query_ids, vectors(rows) -> (len(rows), d)
    product embeddings (an array's rows, or a FAISS index's stored vectors)."""
    out = np.zeros(len(query_ids))
    for i, q in enumerate(query_ids):
        judged = qrels.get(q, {})
        rows = row_of.reindex(list(judged)).dropna().astype(np.int64)
        if rows.empty:
            continue
        sc = np.asarray(vectors(rows.to_numpy())) @ q_emb[i]
        out[i] = kdd_task1_ndcg(dict(zip(rows.index, sc.tolist())), judged)
    return out


def _write_lines(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# One system
# ---------------------------------------------------------------------------------------------
def run_system(name: str, model: TwoTowerModel, index_dir: Path, products: pd.DataFrame, queries: pd.DataFrame,
               qrels: dict, args) -> dict:
    index, ids, meta = load_index(index_dir, args.index, model=model, products=products)
    with Timer() as t_enc:
        qe = model.encode_queries(queries["query"].tolist())
    with Timer() as t_search:
        scores, rows = search(index, qe, args.top_k)
    run = {q: ids[r[r >= 0]].tolist() for q, r in zip(queries["query_id"], rows)}
    # KDD Task 1 re-ranks judged products: their vectors are already in the index (no encode)
    kdd = judged_rerank_ndcg(qe, queries["query_id"].tolist(), index.reconstruct_batch,
                             pd.Series(np.arange(len(ids)), index=ids), qrels)
    sc = {q: s[r >= 0].tolist() for q, s, r in zip(queries["query_id"], scores, rows)}
    speed = {"query_encode_ms": round(1000 * t_enc.seconds / max(len(queries), 1), 3),
             "search_batch_qps": round(len(queries) / max(t_search.seconds, 1e-9), 1),
             "product_encode_per_s": meta.get("encode_products_per_s")}
    lat_q = queries["query"].head(args.latency_queries).tolist()
    for kind in ("flat", "hnsw"):
        try:
            idx = index if kind == args.index else load_index(index_dir, kind)[0]
        except UserError:
            continue
        lat = []
        for q in lat_q:  # end to end, one query at a time: encode + search
            t = time.perf_counter()
            idx.search(model.encode_queries([q]), min(args.top_k, idx.ntotal))
            lat.append(1000 * (time.perf_counter() - t))
        if lat:
            speed[f"{kind}_latency_ms_p50"] = round(float(np.percentile(lat, 50)), 2)
            speed[f"{kind}_latency_ms_p95"] = round(float(np.percentile(lat, 95)), 2)
            speed[f"{kind}_qps_single"] = round(1000 / float(np.mean(lat)), 1)
    log.info("%s: retrieved %d queries from %s (%s)", name, len(queries), index_dir, args.index)
    return {"run": run, "scores": sc, "speed": speed, "index_meta": meta, "kdd": kdd}


def require_index(model_kind: str, args, index_dir: Path) -> Path:
    """The index directory, or one line saying how to build it."""
    if (index_dir / "metadata.json").is_file():
        return index_dir
    how = (f"python reindex_with_trained_model.py --baseline --base-model {args.base_model}"
           if model_kind == "baseline" else f"python reindex_with_trained_model.py --checkpoint {args.checkpoint}")
    raise UserError(f"no {model_kind} index in {index_dir}: build it with `{how} --data-dir {args.data_dir} "
                    f"--index-dir {index_dir}`")


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> dict:
    out = args.out_dir or eval_dir(args.data_dir)
    refuse_overwrite(args, out / "report.json", *(out / f for f in REPORT_FILES), option="--out-dir")
    out = require_writable(out, "--out-dir")
    dev = get_device(args.device)
    gt = load_prepared(args.data_dir, "ground_truth")
    products = load_catalog(args.data_dir)
    test = gt[gt["split"] == args.split]
    if test.empty:
        raise UserError(f"{args.data_dir / 'ground_truth.parquet'} has no '{args.split}' queries")
    in_cat = test["product_id"].isin(products["product_id"])
    if not in_cat.any():
        raise UserError("no judged test product is in products_clean.parquet: ground truth and catalog do not match")
    qrels = {q: dict(zip(g["product_id"], g["esci_label"])) for q, g in test.groupby("query_id")}
    queries = test.drop_duplicates("query_id")[["query_id", "query"]]
    rel = tuple(args.relevant)
    systems = {}
    trained = TwoTowerModel.from_pretrained(args.checkpoint).to(dev)
    baseline = TwoTowerModel.from_pretrained(args.base_model).to(dev)
    for name, model, idx in (("baseline", baseline, args.baseline_index_dir or index_dir(args.data_dir, True)),
                             ("trained", trained, args.index_dir or index_dir(args.data_dir))):
        systems[name] = run_system(name, model, require_index(name, args, idx), products, queries, qrels,
                                   args)
    report: dict = {"relevant": "+".join(rel), "split": args.split, "index": args.index, "ks": list(DEFAULT_KS),
                    "queries": int(len(queries)), "catalog_size": len(products), "gains": ESCI_GAINS}
    per = {}
    for name, s in systems.items():
        m, per[name] = evaluate_run(s["run"], qrels, rel, ESCI_GAINS, DEFAULT_KS)
        m["kdd_task1_ndcg"] = float(np.mean(s["kdd"]))
        per[name]["kdd_task1_ndcg"] = s["kdd"]
        report[name] = m
        report.setdefault("speed", {})[name] = s["speed"]
    b, t = report["baseline"], report["trained"]
    metrics = [k for k in b if k != "queries"]
    report["delta"] = {k: t[k] - b[k] for k in metrics}
    report["relative"] = {k: (t[k] - b[k]) / b[k] if b[k] else None for k in metrics}
    report["ci95"] = {k: paired_bootstrap_ci(per["baseline"][k], per["trained"][k], args.bootstrap, args.seed)
                      for k in ("recall@10", "ndcg@10", "kdd_task1_ndcg")}
    d = per["trained"]["ndcg@10"] - per["baseline"]["ndcg@10"]
    report["per_query"] = {"ndcg@10": {"better": int((d > 1e-9).sum()), "worse": int((d < -1e-9).sum()),
                                       "same": int((np.abs(d) <= 1e-9).sum())}}
    report["models"] = {"baseline": args.base_model, "trained": str(args.checkpoint)}
    report["peak_rss_mb"] = round(peak_rss_mb())
    report["config"] = args_to_config(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # the completion marker goes first and comes back last
    for name, s in systems.items():
        _write_lines(out / f"{name}.run", trec_run_lines(s["run"], s["scores"], name))
    _write_lines(out / "qrels.txt", trec_qrels_lines(qrels))
    md = render_markdown(report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(md)
    plot(report, d, out)
    report["files"] = {f: file_sha256(out / f) for f in REPORT_FILES}
    write_json(out / "report.json", report)
    print(md)
    return report


def render_markdown(r: dict) -> str:
    rows = [f"# Baseline vs trained two-tower ({r['queries']:,} {r['split']} queries, "
            f"{r['catalog_size']:,} products, relevant = {r['relevant']}, index {r['index']})", "",
            "| metric | baseline | trained | Δ abs | Δ rel |", "| --- | ---: | ---: | ---: | ---: |"]
    for k in HEADLINE + [f"ndcg@{k}" for k in (5, 50)] + [f"recall@{k}" for k in (1, 5, 20, 100)]:
        rel = r["relative"].get(k)
        rows.append(f"| {k} | {r['baseline'][k]:.4f} | {r['trained'][k]:.4f} | {r['delta'][k]:+.4f} | "
                    f"{'n/a' if rel is None else f'{rel:+.1%}'} |")
    rows += ["", "Paired bootstrap 95% CI of the difference (trained − baseline): " + ", ".join(
        f"{k} [{lo:+.4f}, {hi:+.4f}]" for k, (lo, hi) in r["ci95"].items()),
        f"Queries with NDCG@10 better / worse / same: {r['per_query']['ndcg@10']['better']} / "
        f"{r['per_query']['ndcg@10']['worse']} / {r['per_query']['ndcg@10']['same']}", "",
        "| speed | baseline | trained |", "| --- | ---: | ---: |"]
    keys = sorted(set(r["speed"]["baseline"]) | set(r["speed"]["trained"]))
    for k in keys:
        rows.append(f"| {k} | {r['speed']['baseline'].get(k)} | {r['speed']['trained'].get(k)} |")
    return "\n".join(rows) + "\n"


def plot(r: dict, ndcg_delta: np.ndarray, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("baseline", "trained"):
        ax.plot(r["ks"], [r[name][f"recall@{k}"] for k in r["ks"]], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel(f"Recall@K (relevant = {r['relevant']})")
    ax.set_title("Recall@K, baseline vs trained")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out / "recall_at_k.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(np.arange(len(ndcg_delta)), np.sort(ndcg_delta)[::-1], width=1.0,
           color=np.where(np.sort(ndcg_delta)[::-1] >= 0, "tab:green", "tab:red"))
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("test queries (sorted)")
    ax.set_ylabel("NDCG@10 trained − baseline")
    ax.set_title("Per-query NDCG@10 difference")
    fig.tight_layout()
    with atomic_path(out / "ndcg10_per_query_delta.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
