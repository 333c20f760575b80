"""Benchmark: memory of hard-negative mining at ESCI scale, beyond the embeddings and the index.

Uses a prepared `full` sample (bench_prepare.py's work dir): the whole catalog (~1.58M products),
the training queries and the ground truth. Encoding 1.58M products takes hours on 2 CPU cores, so
the catalog embeddings here are random unit vectors (memory does not depend on their values); the
queries are encoded with the real model. Reports RSS after loading embeddings + Flat index, the
peak during mining of --queries training queries, and the time.

Example (~3 min on 2 cores, after bench_prepare.py --size full):
    python bench/bench_mining.py --data /tmp/ttsn_bench_prepare/data --queries 5000
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import ROOT, write_result  # noqa: E402  (puts the project on sys.path)

from embeddings import build_index  # noqa: E402
from hard_negative_mining import mine  # noqa: E402
from two_tower_model import TwoTowerModel  # noqa: E402
from cli import add_version_arg, run_cli  # noqa: E402
from utils import peak_rss_mb  # noqa: E402


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def hwm_mb() -> float:
    """Peak RSS since the last reset_hwm() (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--data", type=Path, default=Path("/tmp/ttsn_bench_prepare/data"))
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "mining_full.json")
    return p.parse_args(argv)


def main(args):
    products = pd.read_parquet(args.data / "products_clean.parquet", columns=["product_id"])
    queries = pd.read_parquet(args.data / "training_pairs.parquet", columns=["query_id", "query"]) \
        .drop_duplicates("query_id").head(args.queries)
    gt = pd.read_parquet(args.data / "ground_truth.parquet", columns=["query_id", "product_id", "esci_label"])
    judged = gt[gt["esci_label"].isin(["E", "S", "C"]) & gt["query_id"].isin(queries["query_id"])]
    judged_pos = {q: set(g) for q, g in judged.groupby("query_id")["product_id"]}
    model = TwoTowerModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    q_emb = model.encode_queries(queries["query"].tolist())
    rng = np.random.default_rng(0)
    n, d = len(products), q_emb.shape[1]
    emb = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 200_000):
        x = rng.standard_normal((min(200_000, n - s), d), dtype=np.float32)
        emb[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = build_index(emb, "flat")
    del emb  # the Flat index holds its own copy
    base = rss_mb()
    reset_hwm()
    t = time.perf_counter()
    pos_score = np.full(len(queries), 0.5, dtype=np.float32)
    kq, kr, ks, krank, drops = mine(q_emb, queries["query_id"].to_numpy(), index, products["product_id"].to_numpy(),
                                    judged_pos, pos_score, 100, 15, 0, 0.05)
    secs = time.perf_counter() - t
    res = {"catalog": n, "queries": len(queries), "dim": d, "index_gb": round(n * d * 4 / 2**30, 2),
           "rss_after_index_mb": round(base), "peak_rss_during_mining_mb": round(hwm_mb()),
           "peak_beyond_index_mb": round(hwm_mb() - base), "process_peak_rss_mb": round(peak_rss_mb()),
           "mine_seconds": round(secs, 1),
           "queries_per_s": round(len(queries) / secs, 1), "negatives": int(len(kq))}
    return write_result(args.out, res)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
