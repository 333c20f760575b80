"""Benchmark: `--make-sample` + `prepare_training_data.py` at a given size (time, peak RSS).

Each step runs as its own process; its peak RSS comes from wait4's rusage. Writes a JSON result.

Example (ESCI scale, ~5 min on 2 cores):
    python bench/bench_prepare.py --size full --work /tmp/bench_full --out bench/out/prepare_full.json
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
from cli import add_version_arg  # noqa: E402


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
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    raw, data = args.work / "raw", args.work / "data"
    py = sys.executable
    res = {"size": args.size, "cpus": os.cpu_count()}
    res["make_sample"] = timed([py, "sample_catalog.py", "--size", args.size, "--raw-dir", str(raw)])
    res["prepare"] = timed([py, "prepare_training_data.py", "--raw-dir", str(raw), "--data-dir", str(data)])
    res["total_seconds"] = round(res["make_sample"]["seconds"] + res["prepare"]["seconds"], 1)
    stats = json.loads((data / "prepare_stats.json").read_text())
    res["catalog_products"] = stats["catalog_products"]
    res["examples_used"] = stats["examples_used"]
    res["train_pairs"] = stats["pairs"]["train"]["pairs"]
    return write_result(args.out, res)


if __name__ == "__main__":
    main(parse_args())
