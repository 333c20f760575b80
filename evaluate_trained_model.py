"""Phase 7: evaluate the trained system against what a user would run otherwise, on the test queries.

Systems, every one retrieving each test query from the whole catalog:
  baseline               the pretrained model (--base-model) over data/indices_baseline
  trained                the trained model (--checkpoint) over data/indices
  bm25                   BM25 over the same product text (lexical.py, data/indices_bm25)
  hybrid(M+bm25)         M's top 200 fused with BM25's: w * minmax(M) + (1 - w) * minmax(BM25), the
                         dense weight w chosen on the validation queries (--hybrid-weight; recorded)
  rrf(M+bm25)            reciprocal-rank fusion of the two lists (k = 60)
  for M = trained and baseline (--no-bm25: baseline and trained only). A missing index is
  reported with the command that builds it; a BM25 index of another catalog, or a damaged one, is
  refused.

Reads: the two models and their indices, data/indices_bm25, data/ground_truth.parquet (split test,
and val for the hybrid weight) and data/products_clean.parquet.
Writes (--out-dir, default data/eval):
  report.json   {"systems": {name: metrics}, "comparisons": {"A - B": {gain, ci95, better/worse/same}},
                 "hybrid": {weights, validation grid}, "speed": {name: ...}, "baseline", "trained",
                 "delta", "relative", "ci95", "per_query", "files": {name: sha256}}; metrics as flat
                 numbers: recall@K, precision@K, ndcg@K (ESCI gains E 1, S 0.1, C 0.01), mrr, map,
                 K = 1 5 10 20 50 100 200, and kdd_task1_ndcg (KDD Cup 2022 Task 1: each query's
                 judged products re-ranked by the system, nDCG with gains E 1, S 0.1, C 0.01, I 0)
  report.md     the comparison tables; recall_at_k.png, ndcg10_per_query_delta.png
  <system>.run  TREC run files (top 200), qrels.txt (E 3, S 2, C 1, I 0)
report.json is written last and lists the other files with their sha256 (run_workflow.sh checks
them): a run killed part-way leaves no report.json, so nothing reads a half-finished evaluation.

Example (after the workflow's reindex step):
    python evaluate_trained_model.py --data-dir data --checkpoint checkpoints/best_model.pt
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lexical import Bm25Index
from metrics import DEFAULT_KS, paired_bootstrap_ci
from retrieval import (HYBRID_DEPTH, PRIOR_WEIGHT, Bm25Searcher, DenseSearcher, HybridSearcher, bm25_run, choose_weight,
                       dense_run, fused_run, judged_candidates, run_metrics)
from two_tower_model import TwoTowerModel
from cli import (NONNEG_INT, POSITIVE_INT, add_common_args, add_comparison_args, args_to_config, float_range,
                 refuse_overwrite, run_cli)
from fileio import atomic_path, file_sha256, load_catalog, load_prepared, require_writable, write_json
from paths import ESCI_GAINS, bm25_index_dir, eval_dir, index_dir
from utils import Timer, UserError, get_device, log, peak_rss_mb

TREC_GRADE = {"E": 3, "S": 2, "C": 1, "I": 0}
DENSE = ("baseline", "trained")
SYSTEMS = ["baseline", "trained", "bm25",
           *(f"{f}({n}+bm25)" for f in ("hybrid", "rrf") for n in ("trained", "baseline"))]  # report order
HEADLINE = ["recall@10", "recall@50", "recall@200", "ndcg@10", "mrr", "map", "kdd_task1_ndcg"]
CI_METRICS = ("recall@10", "ndcg@10", "kdd_task1_ndcg")
PLOTS = ("recall_at_k.png", "ndcg10_per_query_delta.png")
# (reference, system): the report gives system - reference with its paired-bootstrap CI
COMPARISONS = [("baseline", "trained"), ("bm25", "trained"), ("trained", "hybrid(trained+bm25)"),
               ("bm25", "hybrid(trained+bm25)"), ("hybrid(baseline+bm25)", "hybrid(trained+bm25)"),
               ("bm25", "hybrid(baseline+bm25)")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_args(p)
    p.add_argument("--bm25-index-dir", type=Path, default=None, help="the BM25 index (default: DATA_DIR/indices_bm25)")
    p.add_argument("--no-bm25", action="store_true", help="compare the two dense systems only (no BM25, no hybrid)")
    p.add_argument("--hybrid-weight", type=float_range(0.0, 1.0), default=None, metavar="W",
                   help="dense weight of the hybrid (0 = BM25 only, 1 = dense only); default: chosen on the "
                        "validation queries, per dense system")
    p.add_argument("--index", choices=["flat", "hnsw"], default="flat", help="index used for the metrics")
    p.add_argument("--relevant", choices=["E", "ES"], default="E", help="labels that count as relevant")
    p.add_argument("--split", default="test")
    p.add_argument("--top-k", type=POSITIVE_INT, default=HYBRID_DEPTH)
    p.add_argument("--bootstrap", type=POSITIVE_INT, default=2000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--latency-queries", type=NONNEG_INT, default=200, help="queries timed one by one")
    p.add_argument("--out-dir", type=Path, default=None, help="default: DATA_DIR/eval")
    add_common_args(p, overwrite="the report in --out-dir")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------
def run_file(system: str) -> str:
    """TREC run file name of a system: hybrid(trained+bm25) -> hybrid_trained_bm25.run."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", system.lower())).strip("_") + ".run"


def trec_run_lines(run: dict, scores: dict, tag: str) -> list[str]:
    return [f"{q} Q0 {pid} {r + 1} {s:.6f} {tag}" for q in run for r, (pid, s) in enumerate(zip(run[q], scores[q]))]


def trec_qrels_lines(qrels: dict) -> list[str]:
    return [f"{q} 0 {pid} {TREC_GRADE[lab]}" for q, j in qrels.items() for pid, lab in j.items()]


def read_trec_run(path: Path) -> dict[str, list[str]]:
    """A run file as trec_run_lines writes it -> {query: item ids by rank} (ids as text)."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    for n, line in enumerate(_report_lines(path), 1):
        parts = line.split()
        if len(parts) != 6 or not parts[3].isdigit():
            raise UserError(f"{path}:{n}: not a TREC run line (query Q0 item rank score tag): {line[:80]!r}")
        ranked.setdefault(parts[0], []).append((int(parts[3]), parts[2]))
    return {q: [item for _, item in sorted(v)] for q, v in ranked.items()}


def read_trec_qrels(path: Path) -> dict[str, dict[str, str]]:
    """qrels.txt as trec_qrels_lines writes it -> {query: {item: ESCI label}} (ids as text)."""
    label_of = {g: lab for lab, g in TREC_GRADE.items()}
    qrels: dict[str, dict[str, str]] = {}
    for n, line in enumerate(_report_lines(path), 1):
        parts = line.split()
        if len(parts) != 4 or parts[3] not in {str(g) for g in label_of}:
            raise UserError(f"{path}:{n}: not a qrels line (query 0 item grade 0-3): {line[:80]!r}")
        qrels.setdefault(parts[0], {})[parts[2]] = label_of[int(parts[3])]
    return qrels


def _report_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass an evaluation directory of evaluate_trained_model.py "
                        "(its --out-dir, by default DATA_DIR/eval)")
    return [x for x in path.read_text().splitlines() if x.strip()]


def compare(per: dict, a: str, b: str, n_boot: int, seed: int) -> dict:
    """b - a on the CI metrics (mean gain, paired-bootstrap 95% CI) and NDCG@10 wins/losses."""
    out = {}
    for k in CI_METRICS:
        lo, hi = paired_bootstrap_ci(per[a][k], per[b][k], n_boot, seed)
        out[k] = {"gain": float(np.mean(per[b][k] - per[a][k])), "ci95": [lo, hi]}
    d = per[b]["ndcg@10"] - per[a]["ndcg@10"]
    out["ndcg@10_better_worse_same"] = [int((d > 1e-9).sum()), int((d < -1e-9).sum()), int((np.abs(d) <= 1e-9).sum())]
    return out


def latency(searcher, queries: list[str], k: int, kind: str = "flat") -> dict:
    """End to end, one query at a time (encode + search [+ BM25 + fusion]): p50 / p95 ms, queries/s."""
    lat = []
    for q in queries:
        t = time.perf_counter()
        searcher.search(q, k, kind)
        lat.append(1000 * (time.perf_counter() - t))
    if not lat:
        return {}
    return {f"{kind}_latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
            f"{kind}_latency_ms_p95": round(float(np.percentile(lat, 95)), 2),
            f"{kind}_qps_single": round(1000 / float(np.mean(lat)), 1)}


def _write_lines(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def require_index(model_kind: str, args, index_dir: Path) -> Path:
    """The index directory, or one line saying how to build it."""
    if (index_dir / "metadata.json").is_file():
        return index_dir
    how = (f"python reindex_with_trained_model.py --baseline --base-model {args.base_model}"
           if model_kind == "baseline" else f"python reindex_with_trained_model.py --checkpoint {args.checkpoint}")
    raise UserError(f"no {model_kind} index in {index_dir}: build it with `{how} --data-dir {args.data_dir} "
                    f"--index-dir {index_dir}`")


def _split(gt: pd.DataFrame, split: str) -> tuple[pd.DataFrame, dict]:
    part = gt[gt["split"] == split]
    return (part.drop_duplicates("query_id")[["query_id", "query"]],
            {q: dict(zip(g["product_id"], g["esci_label"])) for q, g in part.groupby("query_id")})


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> dict:
    out = args.out_dir or eval_dir(args.data_dir)
    refuse_overwrite(args, out / "report.json", out / "report.md", option="--out-dir")
    out = require_writable(out, "--out-dir")
    dev = get_device(args.device)
    gt = load_prepared(args.data_dir, "ground_truth")
    products = load_catalog(args.data_dir)
    if not (gt["split"] == args.split).any():
        raise UserError(f"{args.data_dir / 'ground_truth.parquet'} has no '{args.split}' queries")
    if not gt.loc[gt["split"] == args.split, "product_id"].isin(products["product_id"]).any():
        raise UserError("no judged test product is in products_clean.parquet: ground truth and catalog do not match")
    queries, qrels = _split(gt, args.split)
    val_queries, val_qrels = _split(gt, "val")
    cands = judged_candidates(qrels, pd.Series(np.arange(len(products)), index=products["product_id"].to_numpy()))
    rel = tuple(args.relevant)
    models = {"trained": TwoTowerModel.from_pretrained(args.checkpoint).to(dev),
              "baseline": TwoTowerModel.from_pretrained(args.base_model).to(dev)}
    dirs = {"baseline": args.baseline_index_dir or index_dir(args.data_dir, True),
            "trained": args.index_dir or index_dir(args.data_dir)}
    bm25 = None
    if not args.no_bm25:  # checked before the slow part: a missing or stale BM25 index stops here
        bm25 = Bm25Index.load(args.bm25_index_dir or bm25_index_dir(args.data_dir), products)
    runs, speed, searchers, index_meta = {}, {}, {}, {}
    lat_q = queries["query"].head(args.latency_queries).tolist()
    for name in DENSE:
        s = searchers[name] = DenseSearcher(name, models[name], require_index(name, args, dirs[name]), products)
        if args.index not in s.indices:
            raise UserError(f"no {args.index} index in {dirs[name]}: rebuild it without --no-hnsw, or use --index flat")
        with Timer() as t:
            runs[name] = dense_run(models[name], s.indices[args.index], s.ids, queries, args.top_k, cands)
        index_meta[name] = _index_meta(dirs[name])
        speed[name] = {"batch_ms_per_query": round(1000 * t.seconds / max(len(queries), 1), 3),
                       "product_encode_per_s": index_meta[name].get("encode_products_per_s"),
                       **{k: v for kind in s.indices for k, v in latency(s, lat_q, args.top_k, kind).items()}}
        log.info("%s: retrieved %d queries from %s (%s)", name, len(queries), dirs[name], args.index)
    hybrid = {}
    if bm25 is not None:
        with Timer() as t:
            runs["bm25"] = bm25_run(bm25, queries, args.top_k, cands)
        lex = Bm25Searcher(bm25)
        speed["bm25"] = {"batch_ms_per_query": round(1000 * t.seconds / max(len(queries), 1), 3),
                         **latency(lex, lat_q, args.top_k)}
        val_lex = bm25_run(bm25, val_queries, args.top_k)
        hybrid = {"method": "convex: w * minmax(dense) + (1 - w) * minmax(bm25); rrf: k = 60",
                  "depth": args.top_k, "val_queries": len(val_qrels), "weights": {}, "val_grid": {},
                  "val_best": {}, "prior_weight": PRIOR_WEIGHT}
        for name in DENSE:
            if args.hybrid_weight is not None:
                w = args.hybrid_weight
            else:
                s = searchers[name]
                val_dense = dense_run(models[name], s.indices[args.index], s.ids, val_queries, args.top_k)
                w, hybrid["val_grid"][name], hybrid["val_best"][name] = choose_weight(val_dense, val_lex, val_qrels,
                                                                                      rel, ESCI_GAINS)
            hybrid["weights"][name] = w
            runs[f"hybrid({name}+bm25)"] = fused_run(runs[name], runs["bm25"], "convex", w, args.top_k)
            runs[f"rrf({name}+bm25)"] = fused_run(runs[name], runs["bm25"], "rrf", k=args.top_k)
            speed[f"hybrid({name}+bm25)"] = latency(HybridSearcher(searchers[name], lex, w, depth=args.top_k),
                                                     lat_q, args.top_k, args.index)
        log.info("hybrid dense weights (%s): %s", "given" if args.hybrid_weight is not None else
                 f"chosen on {len(val_qrels)} val queries", hybrid["weights"])
    runs = {n: runs[n] for n in SYSTEMS if n in runs}
    speed = {n: speed[n] for n in SYSTEMS if n in speed}
    report = build_report(runs, qrels, cands, queries, rel, len(products), args)
    report.update(speed=speed, hybrid=hybrid, index_meta=index_meta,
                  bm25_index=None if bm25 is None else {k: v for k, v in bm25.meta.items() if k != "files"},
                  models={"baseline": args.base_model, "trained": str(args.checkpoint)},
                  peak_rss_mb=round(peak_rss_mb()), config=args_to_config(args))
    write_outputs(report, runs, qrels, out)
    print(report["markdown"])
    return report


def _index_meta(d: Path) -> dict:
    from fileio import read_json
    m = read_json(d / "metadata.json")
    return {k: m.get(k) for k in ("model_fingerprint", "catalog_size", "encode_backend", "encode_products_per_s")}


def build_report(runs: dict, qrels: dict, cands: dict, queries: pd.DataFrame, rel: tuple, catalog_size: int,
                 args) -> dict:
    """Metrics of every system, the comparisons with their CIs, and the markdown of report.md."""
    report: dict = {"relevant": "+".join(rel), "split": args.split, "index": args.index, "ks": list(DEFAULT_KS),
                    "queries": int(len(queries)), "catalog_size": catalog_size, "gains": ESCI_GAINS, "systems": {}}
    per = {}
    for name, run in runs.items():
        report["systems"][name], per[name] = run_metrics(run, qrels, cands, rel, ESCI_GAINS, DEFAULT_KS,
                                                         query_order=queries["query_id"].tolist())
    b, t = report["systems"]["baseline"], report["systems"]["trained"]
    metrics = [k for k in b if k != "queries"]
    report.update(baseline=b, trained=t, delta={k: t[k] - b[k] for k in metrics},
                  relative={k: (t[k] - b[k]) / b[k] if b[k] else None for k in metrics})
    report["comparisons"] = {f"{s} - {r}": compare(per, r, s, args.bootstrap, args.seed)
                             for r, s in COMPARISONS if r in runs and s in runs}
    tb = report["comparisons"]["trained - baseline"]
    report["ci95"] = {k: tuple(tb[k]["ci95"]) for k in CI_METRICS}
    bws = tb["ndcg@10_better_worse_same"]
    report["per_query"] = {"ndcg@10": {"better": bws[0], "worse": bws[1], "same": bws[2]}}
    report["_ndcg_delta"] = per["trained"]["ndcg@10"] - per["baseline"]["ndcg@10"]
    return report


def write_outputs(report: dict, runs: dict, qrels: dict, out: Path) -> None:
    """Run files, qrels, report.md, plots, then report.json (the completion marker) last."""
    delta = report.pop("_ndcg_delta")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # the completion marker goes first and comes back last
    for name in set(SYSTEMS) - set(runs):  # an earlier report's runs of systems not in this one
        (out / run_file(name)).unlink(missing_ok=True)
    files = []
    for name, run in runs.items():
        _write_lines(out / run_file(name), trec_run_lines(run.ids, run.scores, run_file(name)[:-4]))
        files.append(run_file(name))
    _write_lines(out / "qrels.txt", trec_qrels_lines(qrels))
    report["markdown"] = render_markdown(report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report["markdown"])
    plot(report, delta, out)
    report["files"] = {f: file_sha256(out / f) for f in [*files, "qrels.txt", "report.md", *PLOTS]}
    write_json(out / "report.json", report)


def render_markdown(r: dict) -> str:
    sysm = r["systems"]
    rows = [f"# Retrieval on {r['queries']:,} {r['split']} queries ({r['catalog_size']:,} products, relevant = {r['relevant']}, "
            f"index {r['index']})", "",
            "| system | " + " | ".join(HEADLINE) + " |", "| --- |" + " ---: |" * len(HEADLINE)]
    for name, m in sysm.items():
        rows.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in HEADLINE) + " |")
    h = r.get("hybrid") or {}
    if h.get("weights"):
        how = (f"chosen on {h['val_queries']} validation queries" if h.get("val_grid") else "given")
        kept = [f"{k}'s validation best {b['best']:.1f} was not better than {h['weights'][k]:.1f} out of fold "
                f"(each half of the queries at the other half's choice: CI [{b['ci'][0]:+.4f}, {b['ci'][1]:+.4f}])"
                for k, b in (h.get("val_best") or {}).items() if b.get("ci") and b["best"] != h["weights"][k]]
        rows += ["", f"hybrid = w × min-max(dense) + (1 − w) × min-max(BM25) over each system's top "
                     f"{h['depth']}, dense weight w "
                     + ", ".join(f"{k} {v:.1f}" for k, v in h["weights"].items()) + f" ({how}"
                     + "".join(f"; {x}" for x in kept) + "); rrf = reciprocal-rank fusion, k = 60."]
    rows += ["", "Paired bootstrap 95% CI of each difference (system − reference):", "",
             "| system − reference | Δ recall@10 [CI] | Δ ndcg@10 [CI] | Δ kdd_task1_ndcg [CI] | "
             "NDCG@10 better/worse/same |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, c in r["comparisons"].items():
        cells = [f"{c[k]['gain']:+.4f} [{c[k]['ci95'][0]:+.4f}, {c[k]['ci95'][1]:+.4f}]" for k in CI_METRICS]
        rows.append(f"| {name} | " + " | ".join(cells) + " | " + "/".join(map(str, c["ndcg@10_better_worse_same"]))
                    + " |")
    rows += ["", "| metric | baseline | trained | Δ abs | Δ rel |", "| --- | ---: | ---: | ---: | ---: |"]
    for k in ["precision@10"] + [f"ndcg@{k}" for k in (5, 50)] + [f"recall@{k}" for k in (1, 5, 20, 100)]:
        rel = r["relative"].get(k)
        rows.append(f"| {k} | {r['baseline'][k]:.4f} | {r['trained'][k]:.4f} | {r['delta'][k]:+.4f} | "
                    f"{'n/a' if rel is None else f'{rel:+.1%}'} |")
    names = list(r["speed"])
    keys = sorted({k for s in r["speed"].values() for k in s})
    rows += ["", "| speed | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for k in keys:
        rows.append(f"| {k} | " + " | ".join(str(r["speed"][n].get(k, "–")) for n in names) + " |")
    return "\n".join(rows) + "\n"


def plot(r: dict, ndcg_delta: np.ndarray, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, m in r["systems"].items():
        ax.plot(r["ks"], [m[f"recall@{k}"] for k in r["ks"]], marker="o", ms=3, label=name,
                ls="--" if name.startswith("rrf") else "-")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel(f"Recall@K (relevant = {r['relevant']})")
    ax.set_title("Recall@K of every system")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / "recall_at_k.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    d = np.sort(ndcg_delta)[::-1]
    ax.bar(np.arange(len(d)), d, width=1.0, color=np.where(d >= 0, "tab:green", "tab:red"))
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
