"""Benchmark: one AdamW step on the base encoder's parameters, PyTorch's default multi-tensor kernel
against the fused one that train_ops.make_optimizer uses on CPU and CUDA.

Reads the base model (all-MiniLM-L6-v2 by default); writes a JSON with ms per step of each kernel
(rounds alternate the two, so a slow phase of the machine hits both) and the CPU flags.

Example (~20 s on 2 cores):
    python bench/bench_optimizer.py --out bench/out/optimizer.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import ROOT, cpu_flags, write_result  # noqa: E402  (puts the project on sys.path)

from cli import add_version_arg, run_cli  # noqa: E402
from paths import DEFAULT_BASE_MODEL  # noqa: E402
from utils import resolve_model_path  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "optimizer.json")
    return p.parse_args(argv)


def step_ms(params: list, fused: bool, steps: int) -> float:
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, fused=fused or None)
    for _ in range(3):  # state allocation and first-call costs
        opt.step()
    t = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t) / steps * 1000


def main(args: argparse.Namespace) -> dict:
    from transformers import AutoModel
    model = AutoModel.from_pretrained(resolve_model_path(args.base_model))
    params = list(model.parameters())
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    res = {"base_model": args.base_model, "parameters": sum(p.numel() for p in params),
           "threads": torch.get_num_threads(), "steps": args.steps, "foreach_ms": [], "fused_ms": [],
           "cpu": cpu_flags()}
    for _ in range(args.rounds):
        for fused in (False, True):
            res["fused_ms" if fused else "foreach_ms"].append(round(step_ms(params, fused, args.steps), 2))
    res["speedup"] = round(min(res["foreach_ms"]) / min(res["fused_ms"]), 2)
    write_result(args.out, res)
    return res


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
