"""Benchmark: retrieval quality of the trained two-tower model against its peer, a plain
sentence-transformers MNRL fine-tune, the pretrained baseline and BM25, alone and fused with BM25,
on one ESCI-format data set.

One run, one table, every system on the same catalog and the same test queries, all scored by
the project's own metric code (metrics.evaluate_run, relevant = E, ESCI gains for NDCG, and the
KDD Cup 2022 Task 1 nDCG), each with the paired-bootstrap 95% CI of its gain over the baseline and
the count of test queries whose NDCG@10 is better / worse / the same:

  baseline  the pretrained all-MiniLM-L6-v2 (or --base-model)
  peer      SentenceTransformerTrainer + MultipleNegativesRankingLoss, the defaults a user would
            pick: lr 2e-5, warm-up 10%, NO_DUPLICATES batch sampler, batch 32, one row per E/S
            training positive, the project's stage-1 epoch count (2), the project's product text
            and max length (128); with --peer-max-pairs, trained on at most that many pairs
  trained   the project's model: --checkpoint, or (default) the whole run_workflow.sh run on the
            data, with any extra training flags after `--`
  bm25      lexical.Bm25Index over the same product text (Elasticsearch-like analyzer, k1 1.2, b 0.75)
  hybrid(M+bm25)  M's top 200 fused with BM25's (convex min-max fusion, the dense weight chosen on
            the validation queries, as evaluate_trained_model.py does), for M = trained and peer

Reads: --raw-dir (ESCI files; default: the built-in `small` sample catalog), optional --checkpoint.
Writes: --out-dir/quality_<tag>.json and .md (default bench/out/); work files under --work-dir.
Needs `pip install -r bench/requirements.txt` (datasets, accelerate) for the peer's trainer.

Examples (CPU):
    python bench/bench_quality.py --raw-dir ../shared/real_esci --resplit-queries 0.5          # ~5 min
    python bench/bench_quality.py --tag sample --peer-max-pairs 5120                            # ~25 min
    python bench/bench_quality.py --raw-dir ../shared/real_esci --resplit-queries 0.5 --tag c0 -- --contrastive-weight 0
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import ROOT, write_result  # noqa: E402  (puts the project on sys.path)

from embeddings import build_index, catalog_embeddings  # noqa: E402
from lexical import Bm25Index  # noqa: E402
from metrics import paired_bootstrap_ci  # noqa: E402
from retrieval import bm25_run, choose_weight, dense_run, fused_run, judged_candidates, run_metrics  # noqa: E402
from two_tower_model import TwoTowerModel  # noqa: E402
from cli import add_version_arg, setup_logging  # noqa: E402
from fileio import load_catalog, load_prepared  # noqa: E402
from paths import DEFAULT_BASE_MODEL, ESCI_GAINS, best_checkpoint  # noqa: E402
from utils import resolve_model_path  # noqa: E402

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
    p.add_argument("--peer-max-pairs", type=int, default=None, help="cap the peer's training pairs (budgeted runs)")
    p.add_argument("--peer-batch-size", type=int, default=32)
    p.add_argument("--tag", default=None, help="name of this run (default: the raw dir's or sample's name)")
    p.add_argument("--work-dir", type=Path, default=None, help="default: bench/out/quality_work/<tag>")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--reuse-peer", action="store_true", help="reuse a peer model already in the work dir")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="after --: extra flags for the workflow's training")
    args = p.parse_args(argv)
    args.train_flags = [f for f in args.train_flags if f != "--"]
    args.tag = args.tag or (args.raw_dir.name if args.raw_dir else f"sample_{args.size}")
    args.work_dir = args.work_dir or ROOT / "bench" / "out" / "quality_work" / args.tag
    return args


# ---------------------------------------------------------------------------------------------
# The three systems
# ---------------------------------------------------------------------------------------------
def run_workflow(args, data: Path, ck: Path) -> float:
    """The project's whole workflow on the data (prepare included); returns its wall time."""
    cmd = ["bash", str(ROOT / "run_workflow.sh"), "--data-dir", str(data), "--checkpoint-dir", str(ck)]
    cmd += ["--raw-dir", str(args.raw_dir)] if args.raw_dir else ["--size", args.size]
    if args.resplit_queries is not None:
        cmd += ["--resplit-queries", str(args.resplit_queries)]
    if args.train_flags:
        cmd += ["--", *args.train_flags]
    t = time.perf_counter()
    env = {**os.environ, "PYTHON": sys.executable}
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t


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


def train_peer(args, data: Path, out: Path) -> dict:
    """SentenceTransformerTrainer + MNRL on one row per E/S training positive."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers
    pairs = load_prepared(data, "training_pairs", ["query", "product_text", "esci_label", "label"])
    pos = pairs[(pairs["label"] > 0) & pairs["esci_label"].isin(["E", "S"])]
    ds = Dataset.from_dict({"anchor": pos["query"].tolist(), "positive": pos["product_text"].tolist()})
    model = SentenceTransformer(resolve_model_path(args.base_model), device="cpu")
    model.max_seq_length = 128  # the project's product max length (queries are far shorter)
    steps_per_epoch = math.ceil(len(ds) / args.peer_batch_size)
    max_steps = -1
    if args.peer_max_pairs:
        max_steps = min(STAGE1_EPOCHS * steps_per_epoch, math.ceil(args.peer_max_pairs / args.peer_batch_size))
    from utils import bf16_supported
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out.parent / "peer_trainer"), num_train_epochs=STAGE1_EPOCHS, max_steps=max_steps,
        per_device_train_batch_size=args.peer_batch_size, learning_rate=2e-5, warmup_ratio=0.1,
        batch_sampler=BatchSamplers.NO_DUPLICATES, bf16=bf16_supported(torch.device("cpu")),
        save_strategy="no", logging_steps=50, report_to=[], seed=args.seed, use_cpu=True)
    t = time.perf_counter()
    SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                               loss=MultipleNegativesRankingLoss(model)).train()
    model.save(str(out))
    return {"pairs": len(ds), "max_steps": max_steps, "seconds": round(time.perf_counter() - t, 1),
            "bf16": targs.bf16}


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def dense_runs(model: TwoTowerModel, products: pd.DataFrame, sets: dict, data: Path) -> dict:
    """The model's runs (exact search over the whole catalog, top 200) for each query set
    {name: (queries, cands)}. The catalog embeddings come from the model's cache in `data`
    (filled by the workflow's reindex/mining); judged products are scored from them (no encode)."""
    p_emb, _ = catalog_embeddings(model, products, data, show_progress=len(products) > 20_000)
    index = build_index(p_emb, "flat")
    ids = products["product_id"].to_numpy()
    return {name: dense_run(model, index, ids, q, 200, cands, vectors=lambda r: p_emb[r])
            for name, (q, cands) in sets.items()}


def score(run, qrels: dict, cands: dict, queries: pd.DataFrame) -> dict:
    means, per = run_metrics(run, qrels, cands, ("E",), ESCI_GAINS, (10, 50, 200), queries["query_id"].tolist())
    means["kdd_task1_ndcg_all_queries"] = len(queries)
    return {"means": means, "per": per}


def compare(systems: dict, n_boot: int, seed: int) -> dict:
    base = systems["baseline"]["per"]
    out = {}
    for name, s in systems.items():
        row = {k: round(s["means"][k], 4) for k in COMPARED}
        if name != "baseline":
            for k in COMPARED:
                lo, hi = paired_bootstrap_ci(base[k], s["per"][k], n_boot, seed)
                row[f"{k}_gain"] = round(s["means"][k] - systems["baseline"]["means"][k], 4)
                row[f"{k}_ci95"] = [round(lo, 4), round(hi, 4)]
            d = s["per"]["ndcg@10"] - base["ndcg@10"]
            row["ndcg@10_better_worse_same"] = [int((d > 1e-9).sum()), int((d < -1e-9).sum()),
                                                int((np.abs(d) <= 1e-9).sum())]
        out[name] = row
    for ref in ("peer", "bm25"):  # trained_vs_peer, trained_vs_bm25, and the hybrid against its parts
        for sys_ in ("trained", "hybrid(trained+bm25)"):
            if ref in systems and sys_ in systems:
                tr, pe = systems[sys_]["per"], systems[ref]["per"]
                key = f"{'trained' if sys_ == 'trained' else 'hybrid'}_vs_{ref}"
                out[key] = {k: {"gain": round(float(np.mean(tr[k] - pe[k])), 4),
                                "ci95": [round(x, 4) for x in paired_bootstrap_ci(pe[k], tr[k], n_boot, seed)]}
                            for k in COMPARED}
    return out


def markdown(res: dict) -> str:
    t = res["table"]
    lines = [f"### {res['tag']}: {res['test_queries']} test queries with an E product, "
             f"{res['catalog_size']:,} products (relevant = E)", "",
             "| system | Recall@10 | NDCG@10 | MRR | KDD Task 1 nDCG | NDCG@10 better/worse/same |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in res["labels"]:
        if name not in t:
            continue
        r = t[name]

        def cell(k):
            if name == "baseline":
                return f"{r[k]:.4f}"
            lo, hi = r[f"{k}_ci95"]
            return f"{r[k]:.4f} ({r[f'{k}_gain']:+.4f}, CI [{lo:+.3f}, {hi:+.3f}])"
        bws = "–" if name == "baseline" else "/".join(map(str, r["ndcg@10_better_worse_same"]))
        lines.append(f"| {res['labels'][name]} | {cell('recall@10')} | {cell('ndcg@10')} | {cell('mrr')} | "
                     f"{cell('kdd_task1_ndcg')} | {bws} |")
    for key, what in (("trained_vs_peer", "Trained − peer"), ("trained_vs_bm25", "Trained − BM25"),
                      ("hybrid_vs_bm25", "hybrid(trained+bm25) − BM25"),
                      ("hybrid_vs_peer", "hybrid(trained+bm25) − peer")):
        if key in t:
            v = t[key]
            lines += ["", f"{what}: " + ", ".join(
                f"{k} {v[k]['gain']:+.4f} [{v[k]['ci95'][0]:+.3f}, {v[k]['ci95'][1]:+.3f}]" for k in COMPARED)]
    if res.get("hybrid_weights"):
        lines += ["", "Hybrid dense weights (chosen on the validation queries): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in res["hybrid_weights"].items())]
    lines += ["", f"Command: `{res['command']}`"]
    return "\n".join(lines) + "\n"


def main(args) -> dict:
    setup_logging("INFO")
    work = args.work_dir
    data, ck = work / "data", work / "ck"
    res = {"tag": args.tag, "raw_dir": str(args.raw_dir) if args.raw_dir else f"sample:{args.size}",
           "resplit_queries": args.resplit_queries, "train_flags": args.train_flags,
           "command": "python bench/bench_quality.py " + " ".join(sys.argv[1:]),
           "cpu_flags": sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in
                                ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}) if Path("/proc/cpuinfo").exists() else []}
    if args.checkpoint:
        prepare_only(args, data)
        trained_ck = args.checkpoint
    else:
        if ck.exists():
            shutil.rmtree(ck)  # a fresh training run for this tag
        res["workflow_seconds"] = round(run_workflow(args, data, ck), 1)
        trained_ck = best_checkpoint(ck)
        res["train_metrics"] = json.loads((ck / "train_metrics.json").read_text()).get("best")
    peer_dir = work / "peer"
    if not (args.reuse_peer and (peer_dir / "config.json").is_file()):
        res["peer_training"] = train_peer(args, data, peer_dir)
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
    models = {"baseline": TwoTowerModel.from_pretrained(args.base_model),
              "peer": TwoTowerModel.from_pretrained(str(peer_dir)),
              "trained": TwoTowerModel.from_pretrained(trained_ck)}
    res["labels"] = {"baseline": "baseline (pretrained MiniLM)", "bm25": "BM25 (bm25s, k1 1.2, b 0.75)",
                     "peer": "peer: ST MNRL fine-tune", "trained": "trained two-tower (this project)",
                     "hybrid(peer+bm25)": "hybrid(peer + BM25)", "hybrid(trained+bm25)": "hybrid(trained + BM25)"}
    runs = {}
    for name, m in models.items():
        r = dense_runs(m, products, {"test": (queries, cands), "val": (val_queries, None)}, data)
        runs[name], runs[f"{name}:val"] = r["test"], r["val"]
    bm25 = Bm25Index.build(products, show_progress=False)
    runs["bm25"], runs["bm25:val"] = bm25_run(bm25, queries, 200, cands), bm25_run(bm25, val_queries, 200)
    res["hybrid_weights"] = {}
    for name in ("peer", "trained"):
        w, _ = choose_weight(runs[f"{name}:val"], runs["bm25:val"], val_qrels, ("E",), ESCI_GAINS)
        res["hybrid_weights"][name] = w
        runs[f"hybrid({name}+bm25)"] = fused_run(runs[name], runs["bm25"], "convex", w)
    systems = {name: score(runs[name], qrels, cands, queries) for name in res["labels"]}
    res.update(catalog_size=len(products), test_queries=systems["baseline"]["means"]["queries"],
               metrics={k: s["means"] for k, s in systems.items()},
               table=compare(systems, args.bootstrap, args.seed))
    md = markdown(res)
    (args.out_dir).mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"quality_{args.tag}.md").write_text(md)
    print(md)
    return write_result(args.out_dir / f"quality_{args.tag}.json", res)


if __name__ == "__main__":
    main(parse_args())
