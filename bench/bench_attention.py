"""Benchmark: what dropout and PyTorch's attention kernel choice cost a CPU training step and a CPU
encode of the base encoder.

With dropout > 0, PyTorch's CPU `scaled_dot_product_attention` takes its math kernel; with
dropout 0 (`train_two_tower.py --dropout 0`, and every eval-mode forward) it takes the flash kernel.
This times one forward + backward over a stage-2-like step's length groups (--groups, batch x
tokens) with the encoder's own dropout (torch's masks and SDPA), with the same dropout through
train_ops.py (the trainer's CPU default, `--dropout-kernel auto`), with every dropout layer at 0
(`train_ops.set_dropout`), and at 0 with the math kernel forced; then eval-mode forwards
(--infer-shapes) with the default kernel and with the math one. The training variants take turns
for --rounds rounds (a machine whose speed drifts would otherwise favour whichever runs last).
Random token ids, so only the shapes matter.
Reads the base model; writes a JSON with milliseconds per step / forward (medians of --steps after
--warmup, then over the rounds) and the CPU flags.

Example (~4 min on 2 cores):
    python bench/bench_attention.py --out bench/out/attention.json
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import torch

from common import ROOT, cpu_flags, write_result  # noqa: E402  (puts the project on sys.path)

from cli import add_version_arg, run_cli  # noqa: E402
from train_ops import use_fast_dropout  # noqa: E402
from train_ops import set_dropout  # noqa: E402
from utils import bf16_supported, resolve_model_path  # noqa: E402


def shapes_arg(text: str) -> list[tuple[int, int]]:
    """"70x9,60x16" -> [(70, 9), (60, 16)]."""
    try:
        out = [tuple(int(v) for v in part.split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxTOKENS[,...], got {text!r}") from None
    if not out or any(len(s) != 2 or min(s) < 1 for s in out):
        raise argparse.ArgumentTypeError(f"expected BATCHxTOKENS[,...] of positive numbers, got {text!r}")
    return out


def median_ms(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1e3, 1)


def _inputs(batch: int, tokens: int, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, vocab, (batch, tokens), generator=gen)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[: batch // 3, max(1, tokens - 3):] = 0  # some padding, as in a real group
    return ids, mask


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--base-model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--groups", type=shapes_arg, default=shapes_arg("70x9,60x16,50x22,32x30,12x44"),
                   help="the training step's length groups, BATCHxTOKENS (default: 224 texts, 4,178 tokens)")
    p.add_argument("--infer-shapes", type=shapes_arg, default=shapes_arg("64x16,64x24,64x40,64x128"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="training variants take turns this many times")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: bf16 where native")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "attention.json")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModel
    torch.manual_seed(0)
    enc = AutoModel.from_pretrained(resolve_model_path(args.base_model))
    vocab = int(enc.config.vocab_size)
    precision = args.precision or ("bf16" if bf16_supported(torch.device("cpu")) else "fp32")

    def cast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(0)
    groups = [_inputs(b, t, vocab, gen) for b, t in args.groups]

    fast = copy.deepcopy(enc)
    res_fast_layers = use_fast_dropout(fast)  # the trainer's default on the CPU (--dropout-kernel auto)

    def train_step(model):
        total = 0.0
        for ids, mask in groups:
            with cast():
                total = total + model(input_ids=ids, attention_mask=mask).last_hidden_state.float().mean()
        total.backward()

    own = max((m.p for m in enc.modules() if isinstance(m, torch.nn.Dropout)), default=0.0)
    enc.train(), fast.train()
    res = {"threads": torch.get_num_threads(), "cpu": cpu_flags(), "precision": precision,
           "base_model": args.base_model, "groups": [list(s) for s in args.groups],
           "tokens": sum(b * t for b, t in args.groups), "steps": args.steps, "warmup": args.warmup,
           "rounds": args.rounds, "own_dropout": own, "fast_dropout_layers": res_fast_layers,
           "eval_forward_ms": []}
    none = contextlib.nullcontext
    variants = {"own_dropout": (enc, own, none), "own_dropout_fast_kernel": (fast, own, none),
                "dropout_0": (enc, 0.0, none),
                "dropout_0_math_kernel": (enc, 0.0, lambda: sdpa_kernel(SDPBackend.MATH))}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):  # the variants take turns, so a drift of the machine hits them alike
        for name, (model, p, kernel) in variants.items():
            res["dropout_layers"] = set_dropout(model, p)
            with kernel():
                times[name].append(median_ms(lambda: train_step(model), args.steps, args.warmup if r == 0 else 1))
    set_dropout(enc, own)
    res["train_step_ms"] = {v: round(statistics.median(t), 1) for v, t in times.items()}
    res["train_step_ms_per_round"] = times
    enc.eval()
    for b, t in args.infer_shapes:
        ids, mask = _inputs(b, t, vocab, gen)

        def forward():
            with torch.inference_mode(), cast():
                enc(input_ids=ids, attention_mask=mask)
        row = {"batch": b, "tokens": t, "default_kernel": median_ms(forward, args.steps, args.warmup)}
        with sdpa_kernel(SDPBackend.MATH):
            row["math_kernel"] = median_ms(forward, args.steps, args.warmup)
        res["eval_forward_ms"].append(row)
    return write_result(args.out, res)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
