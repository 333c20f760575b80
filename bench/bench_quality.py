"""Benchmark: retrieval quality of the trained two-tower model against the pretrained baseline,
BM25, sentence-transformers fine-tunes (up to three recipes), and the hybrids with BM25, on one
ESCI-format data set, with the wall time each system cost to build.

One run, one table, every system on the same catalog and the same test queries, all scored by the
project's own metric code (metrics.evaluate_run, relevant = E, ESCI gains for NDCG, and the KDD Cup
2022 Task 1 nDCG). Each row gives the paired-bootstrap 95% CI of its difference to the best peer
and to the baseline, and the count of test queries whose NDCG@10 is better / worse / the same:

  baseline  the pretrained all-MiniLM-L6-v2 (or --base-model)
  bm25      lexical.Bm25Index over the same product text (Elasticsearch-like analyzer, k1 1.2, b 0.75)
  peer:R    SentenceTransformerTrainer recipes (bench/peers.py; --peers plain,mined,cached): plain
            MNRL at batch 32, MNRL on mine_hard_negatives n-tuples, CachedMNRL at batch 256; each
            trained for every --peer-epochs value and shown with the count that scores best here
            (Recall@10 + NDCG@10), the others listed in the JSON
  trained   the project's model: --checkpoint, or (default) the whole run_workflow.sh run on the
            data, with any extra training flags after `--`
  hybrid(M+bm25)  M's top 200 fused with BM25's (convex min-max fusion, the dense weight chosen on
            the validation queries, as evaluate_trained_model.py does), for M = trained and the best peer

Reads: --raw-dir (ESCI files; default: the built-in `small` sample catalog), optional --checkpoint.
Writes: --out-dir/quality_<tag>.json and .md (default bench/out/); work files under --work-dir
(peers in WORK/peers/<recipe>_e<epochs>/, reused with --reuse-peer).
Needs `pip install -r bench/requirements.txt` (datasets, accelerate) for the peers' trainer.

Examples (CPU):
    python bench/bench_quality.py --raw-dir ../shared/real_esci --resplit-queries 0.5          # ~6 min
    python bench/bench_quality.py --tag sample --peer-max-pairs 5120                            # ~25 min
    python bench/bench_quality.py --raw-dir ../shared/real_homedepot --resplit-queries 0.3 \
        --peers plain,mined,cached --peer-epochs 1,3                                            # hours
    python bench/bench_quality.py --raw-dir ../shared/real_esci --resplit-queries 0.5 --tag t -- --query-typos 0.2
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import ROOT, cpu_flag_names, write_result  # noqa: E402  (puts the project on sys.path)
import peers  # noqa: E402

from embeddings import build_index, catalog_embeddings  # noqa: E402
from lexical import Bm25Index  # noqa: E402
from metrics import paired_bootstrap_ci  # noqa: E402
from retrieval import bm25_run, choose_weight, dense_run, fused_run, judged_candidates, run_metrics  # noqa: E402
from two_tower_model import TwoTowerModel  # noqa: E402
from cli import add_version_arg, run_cli, setup_logging  # noqa: E402
from fileio import load_catalog, load_prepared  # noqa: E402
from paths import DEFAULT_BASE_MODEL, ESCI_GAINS, best_checkpoint  # noqa: E402
from utils import UserError, log  # noqa: E402

STAGE1_EPOCHS = 2
COMPARED = ("recall@10", "ndcg@10", "mrr", "kdd_task1_ndcg")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_arg(p)
    p.add_argument("--raw-dir", type=Path, default=None, help="ESCI-format files (default: the built-in sample)")
    p.add_argument("--size", default="small", help="sample size when no --raw-dir (tiny|small)")
    p.add_argument("--resplit-queries", type=float, default=None, help="passed to prepare (see its --help)")
    p.add_argument("--checkpoint", type=Path, default=None, help="the project's model; default: run the workflow")
    p.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    p.add_argument("--peers", default="plain", help=f"peer recipes, comma-separated ({', '.join(peers.RECIPES)})")
    p.add_argument("--peer-epochs", default=str(STAGE1_EPOCHS),
                   help="epoch counts to train each peer for, comma-separated; the best one is shown")
    p.add_argument("--peer-max-pairs", type=int, default=None, help="cap the peers' training pairs (budgeted runs)")
    p.add_argument("--peer-batch-size", type=int, default=None, help="default: 32 (plain, mined), 256 (cached)")
    p.add_argument("--peer-mined-negatives", type=int, default=3, help="negatives per row of the mined recipe")
    p.add_argument("--peer-mined-margin", type=float, default=peers.MINED["relative_margin"],
                   help="mine_hard_negatives' relative_margin for the mined recipe")
    p.add_argument("--tag", default=None, help="name of this run (default: the raw dir's or sample's name)")
    p.add_argument("--work-dir", type=Path, default=None, help="default: bench/out/quality_work/<tag>")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--reuse-peer", action="store_true", help="reuse peer models already in the work dir")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--mine-flags", default=None, metavar='"FLAGS"',
                   help="extra hard_negative_mining.py flags for the workflow's two mining steps, e.g. "
                        "--mine-flags=\"--false-negative-margin 0\"")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="after --: extra flags for the workflow's training")
    args = p.parse_args(argv)
    args.train_flags = [f for f in args.train_flags if f != "--"]
    args.peers = [r.strip() for r in args.peers.split(",") if r.strip()]
    bad = [r for r in args.peers if r not in peers.RECIPES]
    if bad:
        p.error(f"--peers: unknown recipe(s) {', '.join(bad)} (choose from {', '.join(peers.RECIPES)})")
    args.peer_epochs = sorted({int(e) for e in args.peer_epochs.split(",")})
    args.tag = args.tag or (args.raw_dir.name if args.raw_dir else f"sample_{args.size}")
    args.work_dir = args.work_dir or ROOT / "bench" / "out" / "quality_work" / args.tag
    return args


# ---------------------------------------------------------------------------------------------
# The three systems
# ---------------------------------------------------------------------------------------------
def run_workflow(args, data: Path, ck: Path) -> tuple[float, dict]:
    """The project's whole workflow on the data (prepare included): its wall time and each step's
    seconds (from the workflow's `=== [step] done in Ns` lines, echoed as they come)."""
    cmd = ["bash", str(ROOT / "run_workflow.sh"), "--data-dir", str(data), "--checkpoint-dir", str(ck)]
    cmd += ["--raw-dir", str(args.raw_dir)] if args.raw_dir else ["--size", args.size]
    if args.resplit_queries is not None:
        cmd += ["--resplit-queries", str(args.resplit_queries)]
    if args.mine_flags:
        cmd += ["--mine-flags", args.mine_flags]
    if args.train_flags:
        cmd += ["--", *args.train_flags]
    t = time.perf_counter()
    env = {**os.environ, "PYTHON": sys.executable}
    print("$", " ".join(cmd), flush=True)
    steps = {}
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, bufsize=1) as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            m = re.match(r"=== \[(\w+)\] done in (\d+)s", line)
            if m:
                steps[m.group(1)] = int(m.group(2))
    if proc.returncode:
        raise UserError(f"the workflow failed (run_workflow.sh exit {proc.returncode}; its error is above); fix it "
                        f"and rerun: the finished steps in {data.parent} are kept")
    return time.perf_counter() - t, steps


def prepare_only(args, data: Path) -> None:
    """What the workflow's sample and prepare steps do (same generator and defaults), for --checkpoint."""
    import prepare_training_data as prep
    import sample_catalog
    raw = args.raw_dir
    if raw is None:  # as run_workflow.sh: sample_catalog.py with its own default seed, then prepare
        raw = args.work_dir / "raw"
        sample_catalog.main(sample_catalog.parse_args(["--size", args.size, "--raw-dir", str(raw), "--overwrite"]))
    argv = ["--data-dir", str(data), "--raw-dir", str(raw), "--overwrite"]  # the work dir is this benchmark's own
    if args.resplit_queries is not None:
        argv += ["--resplit-queries", str(args.resplit_queries)]
    prep.main(prep.parse_args(argv))


def train_peers(args, data: Path) -> dict:
    """Every requested recipe at every epoch count: {f"{recipe}_e{epochs}": (model dir, info)}."""
    pairs = load_prepared(data, "training_pairs", ["query", "product_text", "esci_label", "label"])
    products = load_catalog(data)
    out = {}
    for recipe in args.peers:
        for e in args.peer_epochs:
            name = f"{recipe}_e{e}"
            d = args.work_dir / "peers" / name
            meta = d.parent / f"{name}.json"
            want = peers.settings(recipe, args.peer_batch_size, args.peer_mined_negatives, args.peer_mined_margin)
            info = json.loads(meta.read_text()) if meta.is_file() else {}
            if args.reuse_peer and (d / "config.json").is_file() and peers.reusable(info, want):
                log.info("peer %s: reusing %s", name, d)
            else:
                info = peers.train(recipe, pairs, products, args.base_model, d, e, args.seed, args.peer_max_pairs,
                                   args.peer_batch_size, args.peer_mined_negatives, args.peer_mined_margin)
                meta.write_text(json.dumps(info, indent=1))
            out[name] = (d, info)
    return out


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def dense_runs(model: TwoTowerModel, products: pd.DataFrame, sets: dict, data: Path) -> dict:
    """The model's runs (exact search over the whole catalog, top 200) for each query set
    {name: (queries, cands)}. The catalog embeddings come from the model's cache in `data`
    (filled by the workflow's reindex/mining); judged products are scored from them (no encode)."""
    p_emb, meta = catalog_embeddings(model, products, data, show_progress=len(products) > 20_000,
                                     keep_caches=0)  # a bench work dir keeps every model's encode
    index = build_index(p_emb, "flat")
    ids = products["product_id"].to_numpy()
    out = {name: dense_run(model, index, ids, q, 200, cands, vectors=lambda r: p_emb[r])
           for name, (q, cands) in sets.items()}
    out["encode_seconds"] = meta.get("encode_seconds")
    return out


def score(run, qrels: dict, cands: dict, queries: pd.DataFrame) -> dict:
    means, per = run_metrics(run, qrels, cands, ("E",), ESCI_GAINS, (10, 50, 200), queries["query_id"].tolist())
    means["kdd_task1_ndcg_all_queries"] = len(queries)
    return {"means": means, "per": per}


def unknown_word_queries(queries: pd.DataFrame, products: pd.DataFrame) -> set:
    """Test queries with a word of 4+ letters that no product text contains: on real queries these
    are mostly misspellings ("flourecent", "recesed"), the queries --query-typos is meant for."""
    vocab: set = set()
    for t in products["product_text"].str.lower():
        vocab.update(re.findall(r"[a-z]+", t))
    return {q for q, text in zip(queries["query_id"], queries["query"].str.lower())
            if any(w not in vocab for w in re.findall(r"[a-z]{4,}", text))}


LENGTH_GROUPS = (("1 word", 1, 1), ("2 words", 2, 2), ("3 words", 3, 3), ("4+ words", 4, 10**6))


def query_length_groups(queries: pd.DataFrame) -> dict:
    """{group: query ids} by the query's number of whitespace-separated words (LENGTH_GROUPS):
    dense towers and BM25 win on different lengths, which is why their fusion beats both."""
    n = queries["query"].str.split().str.len().to_numpy()
    return {name: set(queries["query_id"].to_numpy()[(n >= lo) & (n <= hi)]) for name, lo, hi in LENGTH_GROUPS}


def subset_means(systems: dict, qids: set) -> dict:
    """Recall@10 / NDCG@10 of each system over the queries in qids (per-query arrays of run_metrics)."""
    out = {}
    for name, s in systems.items():
        keep = np.isin(np.asarray(s["per"]["query"], dtype=object), list(qids))
        out[name] = {k: round(float(s["per"][k][keep].mean()), 4) if keep.any() else None
                     for k in ("recall@10", "ndcg@10")}
    return out


def compare(systems: dict, ref: str, n_boot: int, seed: int) -> dict:
    """Per system: its means, and its difference to `ref` (gain, paired-bootstrap 95% CI) per metric
    with NDCG@10 wins / losses / ties."""
    out = {}
    for name, s in systems.items():
        row = {}
        if name != ref:
            for k in COMPARED:
                lo, hi = paired_bootstrap_ci(systems[ref]["per"][k], s["per"][k], n_boot, seed)
                row[k] = {"gain": round(s["means"][k] - systems[ref]["means"][k], 4), "ci95": [round(lo, 4), round(hi, 4)]}
            d = s["per"]["ndcg@10"] - systems[ref]["per"]["ndcg@10"]
            row["ndcg@10_better_worse_same"] = [int((d > 1e-9).sum()), int((d < -1e-9).sum()),
                                                int((np.abs(d) <= 1e-9).sum())]
        out[name] = row
    return out


def _minutes(seconds) -> str:
    return "–" if seconds is None else (f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s")


def markdown(res: dict) -> str:
    t, best = res["table"], res["best_peer"]
    lines = [f"### {res['tag']}: {res['test_queries']} test queries with an E product, "
             f"{res['catalog_size']:,} products (relevant = E)", "",
             "| system | Recall@10 | NDCG@10 | MRR | KDD Task 1 | Δ Recall@10 vs best peer [CI] | "
             "Δ NDCG@10 vs best peer [CI] | R@10 × baseline | NDCG@10 better/worse/same vs baseline | "
             "training + encoding |",
             "| --- |" + " ---: |" * 9]
    for name, label in res["labels"].items():
        m = res["metrics"][name]
        vb = t["vs_baseline"].get(name, {})
        vp = t["vs_best_peer"].get(name, {}) if best else {}

        def ci(v, k):
            return "–" if k not in v else f"{v[k]['gain']:+.4f} [{v[k]['ci95'][0]:+.3f}, {v[k]['ci95'][1]:+.3f}]"
        base = res["metrics"]["baseline"]["recall@10"]
        bws = "/".join(map(str, vb["ndcg@10_better_worse_same"])) if vb else "–"
        bold = "**" if name == "trained" else ""
        lines.append(f"| {bold}{label}{bold} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['mrr']:.4f} | "
                     f"{m['kdd_task1_ndcg']:.4f} | {ci(vp, 'recall@10')} | {ci(vp, 'ndcg@10')} | "
                     f"{m['recall@10'] / base:.2f}× | {bws} | {_minutes(res['seconds'].get(name))} |")
    if best:
        lines += ["", f"Best peer: {res['labels'][best]}. Peer epochs tried: "
                  + "; ".join(f"{r}: " + ", ".join(f"{e} → R@10 {v[0]:.4f} / NDCG@10 {v[1]:.4f}" for e, v in eps.items())
                              for r, eps in res["peer_epochs"].items())]
    sub = res.get("unknown_word_queries")
    if sub and sub["queries"]:
        lines += ["", f"Queries with a word no product text contains (mostly misspellings; {sub['queries']} of "
                      f"{res['test_queries']}), Recall@10 / NDCG@10: "
                  + "; ".join(f"{res['labels'][n]} {v['recall@10']:.4f} / {v['ndcg@10']:.4f}"
                              for n, v in sub["metrics"].items())]
    groups = {g: v for g, v in (res.get("by_query_length") or {}).items() if v["queries"]}
    if groups:
        lines += ["", "Recall@10 by query length (words):", "",
                  "| system | " + " | ".join(f"{g} ({v['queries']})" for g, v in groups.items()) + " |",
                  "| --- |" + " ---: |" * len(groups)]
        for name, label in res["labels"].items():
            lines.append(f"| {label} | " + " | ".join(f"{v['metrics'][name]['recall@10']:.4f}"
                                                      for v in groups.values()) + " |")
    if res.get("hybrid_weights"):
        lines += ["", "Hybrid dense weights (chosen on the validation queries): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in res["hybrid_weights"].items())]
    if res.get("workflow_steps"):
        lines += ["", "Workflow steps (s): " + ", ".join(f"{k} {v}" for k, v in res["workflow_steps"].items())]
    lines += ["", f"CPU: {', '.join(res['cpu_flags'])}. Command: `{res['command']}`"]
    return "\n".join(lines) + "\n"


def main(args) -> dict:
    setup_logging("INFO")
    work = args.work_dir
    data, ck = work / "data", work / "ck"
    res = {"tag": args.tag, "raw_dir": str(args.raw_dir) if args.raw_dir else f"sample:{args.size}",
           "resplit_queries": args.resplit_queries, "train_flags": args.train_flags,
           "mine_flags": args.mine_flags,
           "command": "python bench/bench_quality.py " + " ".join(sys.argv[1:]),
           "cpu_flags": cpu_flag_names(),
           "seconds": {}}
    if args.checkpoint:
        prepare_only(args, data)
        trained_ck = args.checkpoint
    else:
        if ck.exists():
            shutil.rmtree(ck)  # a fresh training run for this tag
        wall, steps = run_workflow(args, data, ck)
        res.update(workflow_seconds=round(wall, 1), workflow_steps=steps)
        trained_ck = best_checkpoint(ck)
        res["train_metrics"] = json.loads((ck / "train_metrics.json").read_text()).get("best")
        # what training the model cost: every step after the baselines' indices
        res["seconds"]["trained"] = sum(v for k, v in steps.items() if k not in ("sample", "prepare",
                                                                                 "baseline_index", "bm25_index"))
    trained_peers = train_peers(args, data)
    res["peer_training"] = {k: info for k, (_, info) in trained_peers.items()}
    products = load_catalog(data)
    gt = load_prepared(data, "ground_truth")
    row_of = pd.Series(np.arange(len(products)), index=products["product_id"].to_numpy())
    sets = {}
    for split in ("test", "val"):
        part = gt[gt["split"] == split]
        qrels = {q: dict(zip(g["product_id"], g["esci_label"])) for q, g in part.groupby("query_id")}
        sets[split] = (part.drop_duplicates("query_id")[["query_id", "query"]], qrels)
    (queries, qrels), (val_queries, val_qrels) = sets["test"], sets["val"]
    cands = judged_candidates(qrels, row_of)
    models = {"baseline": args.base_model, **{f"peer:{k}": str(d) for k, (d, _) in trained_peers.items()},
              "trained": trained_ck}
    runs, systems, enc = {}, {}, {}
    for name, src in models.items():
        r = dense_runs(TwoTowerModel.from_pretrained(src), products,
                       {"test": (queries, cands), "val": (val_queries, None)}, data)
        runs[name], runs[f"{name}:val"], enc[name] = r["test"], r["val"], r["encode_seconds"]
        systems[name] = score(runs[name], qrels, cands, queries)
    t0 = time.perf_counter()
    bm25 = Bm25Index.build(products, show_progress=False)
    res["seconds"]["bm25"] = round(time.perf_counter() - t0, 1)
    runs["bm25"], runs["bm25:val"] = bm25_run(bm25, queries, 200, cands), bm25_run(bm25, val_queries, 200)
    systems["bm25"] = score(runs["bm25"], qrels, cands, queries)
    # each recipe at its best epoch count (on this test split: the peers' most favourable choice)
    res["peer_epochs"], shown = {}, {}
    for recipe in args.peers:
        eps = {e: systems[f"peer:{recipe}_e{e}"]["means"] for e in args.peer_epochs}
        res["peer_epochs"][recipe] = {e: [round(m["recall@10"], 4), round(m["ndcg@10"], 4)] for e, m in eps.items()}
        e_best = max(eps, key=lambda e: eps[e]["recall@10"] + eps[e]["ndcg@10"])
        shown[recipe] = f"peer:{recipe}_e{e_best}"
        info = trained_peers[f"{recipe}_e{e_best}"][1]
        res["seconds"][shown[recipe]] = round(info["seconds"] + (enc[shown[recipe]] or 0), 1)
    best = max(shown.values(), key=lambda n: systems[n]["means"]["recall@10"] + systems[n]["means"]["ndcg@10"],
               default=None)
    res["hybrid_weights"] = {}
    for name in [n for n in ("trained", best) if n]:
        w, _, _ = choose_weight(runs[f"{name}:val"], runs["bm25:val"], val_qrels, ("E",), ESCI_GAINS)
        res["hybrid_weights"][name] = w
        runs[f"hybrid({name}+bm25)"] = fused_run(runs[name], runs["bm25"], "convex", w)
        systems[f"hybrid({name}+bm25)"] = score(runs[f"hybrid({name}+bm25)"], qrels, cands, queries)
    if "trained" in res["seconds"]:
        res["seconds"]["trained"] = round(res["seconds"]["trained"], 1)
    res["labels"] = {"baseline": "baseline (pretrained MiniLM)", "bm25": "BM25 (bm25s, k1 1.2, b 0.75)",
                     **{n: f"{peers.LABELS[r]} ({n.rsplit('_e', 1)[1]} ep.)" for r, n in shown.items()},
                     "trained": "trained two-tower (this project)"}
    for name in [n for n in ("trained", best) if n]:
        res["labels"][f"hybrid({name}+bm25)"] = f"hybrid({res['labels'][name].split(' (')[0]} + BM25)"
    shown_systems = {n: systems[n] for n in res["labels"]}
    res.update(catalog_size=len(products), test_queries=systems["baseline"]["means"]["queries"], best_peer=best,
               metrics={k: s["means"] for k, s in systems.items()},
               table={"vs_baseline": compare(shown_systems, "baseline", args.bootstrap, args.seed),
                      "vs_best_peer": compare(shown_systems, best, args.bootstrap, args.seed) if best else {}})
    odd = unknown_word_queries(queries, products) & set(systems["baseline"]["per"]["query"])
    res["unknown_word_queries"] = {"queries": len(odd), "metrics": subset_means(shown_systems, odd)}
    scored = set(systems["baseline"]["per"]["query"])
    res["by_query_length"] = {g: {"queries": len(q & scored), "metrics": subset_means(shown_systems, q & scored)}
                              for g, q in query_length_groups(queries).items()}
    md = markdown(res)
    (args.out_dir).mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"quality_{args.tag}.md").write_text(md)
    print(md)
    return write_result(args.out_dir / f"quality_{args.tag}.json", res)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
