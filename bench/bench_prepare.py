"""Benchmark: `--make-sample` + `prepare_training_data.py` at a given size (time, peak RSS).

Each step runs as its own process; its peak RSS comes from wait4's rusage. Writes a JSON result.

Example (ESCI scale, ~5 min on 2 cores):
    python bench/bench_prepare.py --size full --work /tmp/bench_full --out bench/out/prepare_full.json
    python bench/bench_prepare.py --size full --bm25 --skip-prepare      # reuse the prepared files
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, write_result  # noqa: E402
from cli import add_version_arg, run_cli  # noqa: E402


def timed(cmd: list[str]) -> dict:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, ru = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {code}")
    return {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(ru.ru_maxrss / 1024)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--size", default="full", choices=["tiny", "small", "full"])
    p.add_argument("--work", type=Path, default=Path("/tmp/ttsn_bench_prepare"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "prepare.json")
    p.add_argument("--bm25", action="store_true", help="also build the BM25 index and search it")
    p.add_argument("--bm25-queries", type=int, default=2000)
    p.add_argument("--skip-prepare", action="store_true", help="the work dir is already prepared")
    p.add_argument("--search-worker", action="store_true", help=argparse.SUPPRESS)  # the timed search process
    return p.parse_args(argv)


def bm25_search(data: Path, n_queries: int) -> float:
    """Queries per second of BM25 top-200 search for the first n test queries of a prepared dir."""
    import pandas as pd

    from lexical import Bm25Index
    from paths import bm25_index_dir
    ix = Bm25Index.load(bm25_index_dir(data))
    gt = pd.read_parquet(data / "ground_truth.parquet", columns=["query", "split"])
    queries = gt[gt["split"] == "test"]["query"].drop_duplicates().head(n_queries).tolist()
    t = time.perf_counter()
    ix.search(queries, 200, show_progress=True)
    return len(queries) / (time.perf_counter() - t)


def main(args: argparse.Namespace) -> dict:
    if args.search_worker:  # run by main() below as its own process, so that its peak RSS is its own
        (args.work / "bm25_qps.txt").write_text(str(bm25_search(args.work / "data", args.bm25_queries)))
        return {}
    raw, data = args.work / "raw", args.work / "data"
    py = sys.executable
    res = {"size": args.size, "cpus": os.cpu_count()}
    if not args.skip_prepare:
        res["make_sample"] = timed([py, "sample_catalog.py", "--size", args.size, "--raw-dir", str(raw)])
        res["prepare"] = timed([py, "prepare_training_data.py", "--raw-dir", str(raw), "--data-dir", str(data)])
        res["total_seconds"] = round(res["make_sample"]["seconds"] + res["prepare"]["seconds"], 1)
    if args.bm25:
        res["bm25_index"] = timed([py, "reindex_with_trained_model.py", "--bm25", "--data-dir", str(data),
                                   "--overwrite"])
        res["bm25_search"] = timed([py, str(Path(__file__).resolve()), "--search-worker", "--work", str(args.work),
                                    "--bm25-queries", str(args.bm25_queries)])
        res["bm25_search"].update(queries=args.bm25_queries,
                                  queries_per_s=round(float((args.work / "bm25_qps.txt").read_text()), 1))
        res["bm25_index"]["meta"] = {k: v for k, v in json.loads((data / "indices_bm25" / "metadata.json").read_text())
                                     .items() if k in ("catalog_size", "vocabulary", "postings", "build_seconds")}
    stats = json.loads((data / "prepare_stats.json").read_text())
    res["catalog_products"] = stats["catalog_products"]
    res["examples_used"] = stats["examples_used"]
    res["train_pairs"] = stats["pairs"]["train"]["pairs"]
    return write_result(args.out, res)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
