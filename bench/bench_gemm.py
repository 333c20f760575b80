"""Benchmark: this CPU's matrix-multiply ceiling in fp32 and bf16 at all-MiniLM-L6-v2's shapes, the
limit that training and encoding speed on the CPU comes up against.

Training and encoding MiniLM are almost all (tokens x 384) @ (384 x 384 | 1152 | 1536) and
(tokens x 1536) @ (1536 x 384) products and their transposes, so their speed follows this machine's
GEMM rate, which differs between CPU classes (AVX2 only, AVX-512 with native bf16, AMX). Putting a speed figure next to this ceiling,
measured in the same session, says whether a machine is slow or the code is. Reads nothing; writes a
JSON with GFLOP/s per (dtype, shape) (best and median of --reps timed repetitions, each long enough
to take --min-seconds), each dtype's median over the MiniLM shapes, the bf16/fp32 ratio, and the
CPU flags. bf16 is measured even where it is not native (`bf16_native` in the JSON says which), so
the ratio says what bf16 buys on this CPU.

Example (~1 min on 2 cores):
    python bench/bench_gemm.py --out bench/out/gemm.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import ROOT, cpu_flags, write_result  # noqa: E402  (puts the project on sys.path)

from cli import add_version_arg, run_cli  # noqa: E402
from utils import bf16_supported  # noqa: E402

HIDDEN, FFN = 384, 1536  # all-MiniLM-L6-v2
# (name, K, N) of the per-layer products; M is the batch's token count (--tokens)
MINILM_SHAPES = [("qkv", HIDDEN, 3 * HIDDEN), ("attn_out", HIDDEN, HIDDEN), ("ffn_up", HIDDEN, FFN),
                 ("ffn_down", FFN, HIDDEN)]


def gflops(m: int, k: int, n: int, seconds: float) -> float:
    """GFLOP/s of one (m x k) @ (k x n) product that took `seconds` (2mkn floating-point operations)."""
    return 2.0 * m * k * n / seconds / 1e9


def time_matmul(m: int, k: int, n: int, dtype: torch.dtype, reps: int, min_seconds: float) -> list[float]:
    """Seconds per product, one figure per repetition; each repetition loops long enough to time."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    torch.matmul(a, b)  # first-call costs (kernel selection, allocation)
    t = time.perf_counter()
    torch.matmul(a, b)
    iters = max(1, int(min_seconds / max(time.perf_counter() - t, 1e-6)))
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b)
        out.append((time.perf_counter() - t) / iters)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--tokens", type=int, default=64 * 32,
                   help="rows of each product: a batch's token count (default 2048: batch 64 x 32 tokens)")
    p.add_argument("--square", type=int, default=2048, help="also time one square product of this size (0: no)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gemm.json")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    shapes = [(name, args.tokens, k, n) for name, k, n in MINILM_SHAPES]
    if args.square:
        shapes.append(("square", args.square, args.square, args.square))
    res = {"threads": torch.get_num_threads(), "cpu": cpu_flags(),
           "bf16_native": bf16_supported(torch.device("cpu")), "tokens": args.tokens, "rows": []}
    for dtype in (torch.float32, torch.bfloat16):
        for name, m, k, n in shapes:
            ts = time_matmul(m, k, n, dtype, args.reps, args.min_seconds)
            res["rows"].append({"dtype": str(dtype).removeprefix("torch."), "shape": name, "M": m, "K": k, "N": n,
                                "gflops_best": round(gflops(m, k, n, min(ts)), 1),
                                "gflops_median": round(gflops(m, k, n, statistics.median(ts)), 1)})
    for dt in ("float32", "bfloat16"):
        res[f"minilm_gflops_{dt}"] = round(statistics.median(
            r["gflops_median"] for r in res["rows"] if r["dtype"] == dt and r["shape"] != "square"), 1)
    res["bf16_over_fp32"] = round(res["minilm_gflops_bfloat16"] / res["minilm_gflops_float32"], 2)
    return write_result(args.out, res)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
