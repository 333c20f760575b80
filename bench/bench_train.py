"""Benchmark: training pairs/s of train_two_tower.py versus sentence-transformers'
SentenceTransformerTrainer + MultipleNegativesRankingLoss on the same (query, positive) pairs, batch
size, sequence lengths (queries 32, products 128 tokens) and precision, in one run.

Both train the real all-MiniLM-L6-v2 on the training positives of the `small` sample (long
product texts) or of --raw-dir (e.g. ../shared/real_homedepot: short titles) with in-batch
negatives only (ours: the stage-1 default, symmetric in-batch InfoNCE, which costs what MNRL costs
plus one transposed softmax), once as the workflow runs it, once with --length-groups off (every
batch side padded to its longest text, as before that option existed) and once with
--dropout-kernel torch (torch's dropout masks and SDPA, as before train_ops.py), one after the
other (so a drift of the machine's speed lands on whichever runs later). Rates are steady-state:
the first --warmup steps are excluded. Both trainers run in this one process under oneDNN's
kernel cache as train_two_tower.py widens it (utils.widen_onednn_cache). The CPU flags are recorded. Needs `pip install -r bench/requirements.txt`.

Examples (~6 min on 2 cores each):
    python bench/bench_train.py --steps 12 --batch-size 32 --out bench/out/train.json
    python bench/bench_train.py --raw-dir ../shared/real_homedepot --resplit-queries 0.3 --steps 40 --batch-size 64
    python bench/bench_train.py --raw-dir ../shared/real_homedepot --resplit-queries 0.3 --steps 30 --batch-size 64 \
        --negatives 1    # a stage-2/3 step's shape; this project's trainer only
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from common import ROOT, write_result  # noqa: E402  (puts the project on sys.path)

import prepare_training_data as prep  # noqa: E402
import train_two_tower as tt  # noqa: E402
from cli import add_version_arg, run_cli  # noqa: E402
from utils import bf16_supported, resolve_model_path, widen_onednn_cache  # noqa: E402


def ours(data: Path, args, name: str, *flags: str) -> dict:
    ck = data.parent / f"ck_{name}"
    tt.main(tt.parse_args(["--stage", "1", "--data-dir", str(data), "--checkpoint-dir", str(ck),
                           "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
                           "--precision", args.precision, "--quiet", "--negatives", str(args.negatives),
                           "--val-corpus-size", "10", "--val-batches", "1", *flags]))
    log = [json.loads(x) for x in (ck / "train_log.jsonl").read_text().splitlines()]
    t0 = log[args.warmup - 1]["elapsed_s"]
    t1 = log[-1]["elapsed_s"]
    n = sum(args.batch_size for _ in log[args.warmup:])
    return {"pairs_per_s": round(n / (t1 - t0), 2), "steps_timed": len(log) - args.warmup,
            "step_s": round((t1 - t0) / (len(log) - args.warmup), 3)}


def st_trainer(data: Path, args) -> dict:
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback
    pairs = pd.read_parquet(data / "training_pairs.parquet")
    pos = pairs[(pairs["label"] > 0) & (pairs["stage"] == 1)].sample(frac=1.0, random_state=0)
    ds = Dataset.from_dict({"anchor": pos["query"].tolist(), "positive": pos["product_text"].tolist()})
    model = SentenceTransformer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = 128
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(data.parent / "st_out"), per_device_train_batch_size=args.batch_size,
        max_steps=args.steps, learning_rate=2e-5, warmup_ratio=0.1, bf16=args.precision == "bf16",
        logging_steps=1000, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0,
        use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[Clock()])
    trainer.train()
    t0, t1 = times[args.warmup - 1], times[-1]
    n = args.batch_size * (len(times) - args.warmup)
    return {"pairs_per_s": round(n / (t1 - t0), 2), "steps_timed": len(times) - args.warmup,
            "step_s": round((t1 - t0) / (len(times) - args.warmup), 3)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: bf16 where native")
    p.add_argument("--raw-dir", type=Path, default=None, help="ESCI-format files (default: the small sample)")
    p.add_argument("--resplit-queries", type=float, default=None, help="passed to prepare with --raw-dir")
    p.add_argument("--negatives", type=int, default=0,
                   help="explicit negatives per row for train_two_tower.py (1 = the shape of a stage-2/3 step: "
                        "query, positive, negative; judged-I or random products here); with N > 0 the "
                        "sentence-transformers trainer, which would need other data, is not run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "train.json")
    return p.parse_args(argv)


def main(args) -> dict:
    widen_onednn_cache()  # before either trainer's first matmul: one process, one cache, the same for both
    args.precision = args.precision or ("bf16" if bf16_supported(torch.device("cpu")) else "fp32")
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        source = ["--raw-dir", str(args.raw_dir)] if args.raw_dir else ["--make-sample", "small", "--raw-dir",
                                                                         str(Path(d) / "raw")]
        if args.raw_dir and args.resplit_queries:
            source += ["--resplit-queries", str(args.resplit_queries)]
        prep.main(prep.parse_args([*source, "--data-dir", str(data), "--quiet"]))
        from common import cpu_flags
        pos = pd.read_parquet(data / "training_pairs.parquet", columns=["label", "stage", "product_text"])
        res = {"data": str(args.raw_dir or "sample:small"), "cpu": cpu_flags(), "batch_size": args.batch_size,
               "precision": args.precision, "threads": torch.get_num_threads(), "steps": args.steps,
               "warmup_steps_excluded": args.warmup,
               "mean_product_chars": round(float(pos.loc[pos["label"] > 0, "product_text"].str.len().mean()), 1)}
        res["negatives"] = args.negatives
        if not args.negatives:
            res["st_trainer_mnrl"] = st_trainer(data, args)
        res["train_two_tower"] = ours(data, args, "default")  # as the workflow runs it
        res["train_two_tower_length_groups_off"] = ours(data, args, "groups_off", "--length-groups", "off")
        res["train_two_tower_dropout_kernel_torch"] = ours(data, args, "torch_dropout", "--dropout-kernel", "torch")
    ours_on, ours_off = res["train_two_tower"]["pairs_per_s"], res["train_two_tower_length_groups_off"]["pairs_per_s"]
    res["length_groups_speedup"] = round(ours_on / ours_off, 2)
    res["dropout_kernel_speedup"] = round(ours_on / res["train_two_tower_dropout_kernel_torch"]["pairs_per_s"], 2)
    if not args.negatives:
        st = res["st_trainer_mnrl"]["pairs_per_s"]
        res["speedup"] = round(ours_on / st, 2)
        res["speedup_length_groups_off"] = round(ours_off / st, 2)
    return write_result(args.out, res)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
