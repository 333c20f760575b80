"""Experiment tool: weight-space averages of two-tower checkpoints (levers of issue 27).

Reads two or more checkpoints of one architecture (`.pt` files written by train_two_tower.py), or
one checkpoint and its pretrained base model (--wise), and writes one `.pt` checkpoint whose
weights are their weighted average, loadable wherever a checkpoint is (bench_quality.py
--checkpoint, reindex, evaluate, export):

    uniform soup (Wortsman et al. 2022, "Model soups"):   --checkpoints e3.pt e4.pt e5.pt
    weighted:                                              --checkpoints a.pt b.pt --weights 0.7 0.3
    WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning"): --checkpoints best.pt --wise 0.8
        = 0.8 x fine-tuned + 0.2 x pretrained; above 1 it extrapolates past the fine-tune

Measured on Home Depot (docs/experiments.md): none of these moves Recall@10 outside the noise,
so the suite does not average.

Example (seconds on the CPU):
    python bench/weight_average.py --checkpoints checkpoints/epoch_2.pt checkpoints/epoch_3.pt --output /tmp/soup.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import ROOT  # noqa: F401,E402  (puts the project on sys.path)

from cli import add_version_arg, refuse_overwrite, run_cli  # noqa: E402
from two_tower_model import TwoTowerModel  # noqa: E402
from utils import UserError, log  # noqa: E402

ARCH = ("base_model", "tower_sharing", "projection_dim", "hidden_size", "query_max_len", "product_max_len",
        "query_prompt", "product_prompt")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--checkpoints", type=Path, nargs="+", required=True, help="the .pt checkpoints to average")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per checkpoint, normalised to sum 1 (default: uniform)")
    p.add_argument("--wise", type=float, default=None, metavar="ALPHA",
                   help="one checkpoint: ALPHA x it + (1 - ALPHA) x its pretrained base model")
    p.add_argument("--output", type=Path, required=True, help="the averaged checkpoint (.pt)")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def average_state(states: list[dict], weights: list[float]) -> dict:
    """sum_i w_i * state_i for floating-point tensors (the first state's integer buffers kept)."""
    out = {}
    for k, v in states[0].items():
        if not v.is_floating_point():
            out[k] = v
            continue
        acc = torch.zeros_like(v, dtype=torch.float32)
        for s, w in zip(states, weights):
            acc += w * s[k].float()
        out[k] = acc.to(v.dtype)
    return out


def load_models(args: argparse.Namespace) -> tuple[list[TwoTowerModel], list[float]]:
    """The models to average and their weights, checked to share one architecture."""
    if args.wise is not None:
        if len(args.checkpoints) != 1 or args.weights:
            raise UserError("--wise takes exactly one --checkpoints file and no --weights")
        ft = TwoTowerModel.from_pretrained(args.checkpoints[0])
        if ft.config.projection_dim:
            raise UserError(f"{args.checkpoints[0]}: --wise needs a model without a projection layer (its base "
                            f"model has no trained projection to average with)")
        c = ft.config
        base = TwoTowerModel.from_base(c.base_model, tower_sharing=c.tower_sharing, query_max_len=c.query_max_len,
                                       product_max_len=c.product_max_len, query_prompt=c.query_prompt,
                                       product_prompt=c.product_prompt)
        return [ft, base], [args.wise, 1.0 - args.wise]
    if len(args.checkpoints) < 2:
        raise UserError("give two or more --checkpoints to average (or one with --wise ALPHA)")
    weights = args.weights or [1.0] * len(args.checkpoints)
    if len(weights) != len(args.checkpoints):
        raise UserError(f"--weights: {len(weights)} weights for {len(args.checkpoints)} checkpoints")
    if sum(weights) <= 0:
        raise UserError("--weights must sum to more than 0")
    models = [TwoTowerModel.from_pretrained(p) for p in args.checkpoints]
    for p, m in zip(args.checkpoints[1:], models[1:]):
        for f in ARCH:
            if getattr(m.config, f) != getattr(models[0].config, f):
                raise UserError(f"{p}: {f} is {getattr(m.config, f)!r}, but {args.checkpoints[0]} has "
                                f"{getattr(models[0].config, f)!r}; only checkpoints of one architecture average")
    return models, [w / sum(weights) for w in weights]


def main(args: argparse.Namespace) -> dict:
    if args.output.suffix != ".pt":
        raise UserError(f"--output {args.output}: must be a .pt file")
    refuse_overwrite(args, args.output)
    models, weights = load_models(args)
    out = models[0]
    out.load_state_dict(average_state([m.state_dict() for m in models], weights))
    sources = [str(p) for p in args.checkpoints] + (["<pretrained base>"] if args.wise is not None else [])
    out.save(args.output, extra={"averaged_from": sources, "average_weights": weights})
    log.info("wrote %s: %s", args.output, ", ".join(f"{w:.3g} x {s}" for w, s in zip(weights, sources)))
    return {"output": str(args.output), "sources": sources, "weights": weights}


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
