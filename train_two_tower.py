"""Phase 4: train the two-tower model in stages, with checkpoints, exact resume and multi-process DDP.

Reads (--data-dir): training_pairs.parquet, val_pairs.parquet, products_clean.parquet,
ground_truth.parquet, and for stage 2 / 3 the mined hard_negatives_stage2 / _stage3.parquet.
Writes (--checkpoint-dir): epoch_N.pt (model), stage{N}.pt (model at the end of stage N),
best_model.pt (best validation score, --select; the last epoch with under --min-val-queries),
last.pt (full resumable state; step_N.pt hard links with --save-steps) with its small
progress.json mirror, train_log.jsonl (one line per step), train_metrics.json, train_config.json.

Stages (CHAPTER2_README "Training Stages"); the workflow runs mining between them
(run_workflow.sh: stage 1 -> mine -> stage 2 -> mine -> stage 3):
  1: epoch 1, E+S positives, in-batch negatives only (symmetric InfoNCE), lr 2e-5. One pass:
     the plan's second (--epochs 2) costs 15% of a Home Depot workflow and changed no data set's
     quality beyond its noise (docs/experiments.md)
  2: epoch 2, adds one hard negative per positive, mined with the stage-1 model, lr 2e-5
  3: epoch 3, adds C positives (weights E 1.0 / S 0.9 / C 0.6) and the hard negatives mined
     with the stage-2 model, lr / 10, on the edge cases only: the positives the stage-2 model
     ranks beyond 10 in the catalog (--focus-rank; the mining step writes the ranks). One pass:
     a second (the plan's epoch 5, --epochs 2) changed no data set's quality (docs/experiments.md)
best_model.pt is the best epoch on validation, so a stage that does not improve it is not kept.
The defaults (loss, negatives per stage, batch size auto) are measured choices: README, "Quality
on real judgements". --loss combined --negatives 1 is the plan's original stage-1 recipe.

Multi-process: torchrun --nproc_per_node N train_two_tower.py ... (NCCL on GPUs, gloo on CPUs);
embeddings are gathered so in-batch negatives span the global batch; only rank 0 writes.

Example (CPU, tiny sample, ~1 min):
    python prepare_training_data.py --make-sample tiny --raw-dir /tmp/ttsn/raw --data-dir /tmp/ttsn/data
    python train_two_tower.py --stage 1 --data-dir /tmp/ttsn/data --checkpoint-dir /tmp/ttsn/ck --max-steps 5
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

import losses as L
from checkpoint import load_train_state, read_progress, stage_done
from cli import (FRACTION, NONNEG_FLOAT, NONNEG_INT, POSITIVE_FLOAT, POSITIVE_INT, add_common_args, float_range,
                 int_range, run_cli)
from fileio import require_writable
from paths import progress_path, stage_checkpoint
from train_parts import SELECT, parse_label_weights, shown_score
from trainer import Trainer
from two_tower_model import add_model_args
from utils import UserError, init_distributed, is_main_process, log, set_seed


def batch_size_arg(text: str) -> int | str:
    """--batch-size: 'auto' or an integer >= 2."""
    return "auto" if text == "auto" else int_range(2)(text)


def focus_rank_arg(text: str) -> int | str:
    """--focus-rank: 'auto' or an integer >= 0."""
    return "auto" if text == "auto" else NONNEG_INT(text)


FOCUS_RANK_STAGE3 = 10  # --focus-rank auto at stage 3: positives the stage-2 model already has in its top 10 are left out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=[1, 2, 3], required=True,
                   help="training stage; run_workflow.sh chains 1 -> mine -> 2 -> mine -> 3")
    p.add_argument("--batch-size", type=batch_size_arg, default="auto",
                   help="global batch (split across processes); auto (default) = the largest of 64, 32, 16 that "
                        "gives an epoch at least 32 optimiser steps: 64 on ESCI-size data, 16 on a few hundred "
                        "positives, where more, smaller steps train better (README, 'Quality on real judgements')")
    p.add_argument("--lr", type=NONNEG_FLOAT, default=2e-5, help="stage 1-2 learning rate (stage 3 uses lr/10)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=None, help="the stage's epoch count (default: 1 at each stage)")
    p.add_argument("--max-steps", type=POSITIVE_INT, default=None, help="stop each stage after this many steps")
    p.add_argument("--epoch-pairs", type=POSITIVE_INT, default=None,
                   help="train each epoch on a fresh random subset of this many positives (budgeted runs)")
    p.add_argument("--grad-accum", type=POSITIVE_INT, default=1)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto = bf16 where the device runs it natively, else fp32")
    p.add_argument("--loss", choices=sorted(L.LOSSES), default="infonce",
                   help="infonce (default: in-batch negatives, masked accidental hits, plus any explicit "
                        "negatives), combined (infonce + weighted contrastive, the plan's first recommendation), "
                        "contrastive, triplet")
    p.add_argument("--temperature", type=POSITIVE_FLOAT, default=0.05, help="InfoNCE temperature (scale = 1/T)")
    p.add_argument("--margin", type=NONNEG_FLOAT, default=0.5, help="contrastive/triplet cosine-distance margin")
    p.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=True,
                   help="InfoNCE in both directions (default): each product also picks its own query out of the "
                        "batch's queries (sentence-transformers' MultipleNegativesSymmetricRankingLoss); "
                        "--no-symmetric = query -> product only")
    p.add_argument("--contrastive-weight", type=NONNEG_FLOAT, default=0.5, help="mixing weight in the combined loss")
    p.add_argument("--negatives", type=NONNEG_INT, default=None,
                   help="explicit negatives per positive (default: 0 at stage 1, which trains on in-batch "
                        "negatives only, and 1 at stages 2-3, a mined hard negative or a judged-I product; 1 at "
                        "every stage for the combined, contrastive and triplet losses)")
    p.add_argument("--hard-negatives", choices=["mined", "none"], default="mined",
                   help="stages 2-3: add the mined hard negatives (default) or train on in-batch and judged-I "
                        "negatives only")
    p.add_argument("--focus-rank", type=focus_rank_arg, default="auto", metavar="K",
                   help="stages 2-3: train only on the positives that the model which mined the stage's hard "
                        "negatives ranks beyond K in the whole catalog, the plan's 'refine the model on edge cases' "
                        "(hard_negative_mining.py writes the ranks); 0 = every positive; auto (default) = "
                        f"{FOCUS_RANK_STAGE3} at stage 3, 0 at stage 2; stage 1 always trains on every positive")
    p.add_argument("--bucket-batches", type=NONNEG_INT, default=16,
                   help="sort rows by product length within windows of N batches (faster, less padding); "
                        "0 = random batches")
    p.add_argument("--length-groups", choices=["auto", "on", "off"], default="auto",
                   help="embed each side of a batch (queries, positives, negatives) in length-sorted groups, "
                        "each padded only to its own longest text: the same embeddings, fewer tokens computed; "
                        "auto = on the CPU, off on a GPU")
    p.add_argument("--graded-mask", action=argparse.BooleanOptionalAction, default=False,
                   help="mask from a row's softmax only the products judged at least as relevant as its own "
                        "positive: an E row keeps its query's S/C products as negatives (E ranks above S); "
                        "--no-graded-mask masks every judged E/S/C product")
    p.add_argument("--topic-batches", action=argparse.BooleanOptionalAction, default=True,
                   help="fill each batch with the queries of one topic (spherical k-means of the training queries "
                        "embedded by the stage's starting model, about one cluster per batch), so in-batch "
                        "negatives are products of neighbouring queries (TAS-B's topic-aware sampling); "
                        "--no-topic-batches: random batches, length-bucketed by --bucket-batches")
    p.add_argument("--distinct-queries", action="store_true",
                   help="at most one row per query in a batch (as sentence-transformers' NO_DUPLICATES); "
                        "random batches, so it turns --topic-batches off")
    p.add_argument("--dropout", type=float_range(0.0, 1.0, hi_open=True), default=None, metavar="P",
                   help="while training, the probability of every dropout layer of the encoder (hidden and "
                        "attention); default: the base model's own (0.1 for MiniLM). 0 is not faster on the CPU, where "
                        "attention then takes a slower kernel (docs/experiments.md)")
    p.add_argument("--freeze-layers", type=NONNEG_INT, default=0, metavar="K",
                   help="keep the embeddings and the lowest K transformer layers of each tower at the stage's "
                        "starting weights: backward stops above them. K=3 of MiniLM's 6 layers trains at about "
                        "1.5x the pairs/s on the CPU and cost 0.012 Recall@10 on Home Depot "
                        "(docs/experiments.md); 0 (default) trains every layer")
    p.add_argument("--dropout-kernel", choices=["auto", "fast", "torch"], default="auto",
                   help="how training draws dropout masks: fast = 16-bit lanes of 64-bit random words and an "
                        "fp32 attention written out (train_ops.py; about 1.1x the steps/s on the CPU), torch = "
                        "torch's dropout and SDPA; the same expected activations either way; auto = fast on the "
                        "CPU, torch on a GPU")
    p.add_argument("--query-typos", type=float_range(0.0, 1.0), default=0.0, metavar="P",
                   help="each epoch, give a fraction P of the training queries one realistic typing error "
                        "(augment.py: swap, drop, double, keyboard neighbour; validation stays clean)")
    p.add_argument("--pseudo-queries", type=NONNEG_INT, default=0, metavar="N",
                   help="stage 1 also trains on title-span pseudo-queries of N catalog products (augment.py: a "
                        "2-4 word span of a product's title, e.g. 'heavy duty tarp', as an E positive of that "
                        "product), so the towers learn the vocabulary of the products no judged query reaches; "
                        "the same spans at every --seed; stages 2-3 ignore it. Home Depot: 20000 (a third of its "
                        "catalog) gave +0.0052 Recall@10 on four seeds at 1.9x stage 1's time with one draw "
                        "of spans; other draws or cuts gained less (up to 0.005 apart at one seed); 10000 nothing "
                        "(docs/experiments.md); 0 = off")
    p.add_argument("--lexical-distill", type=NONNEG_FLOAT, default=0.0, metavar="BETA",
                   help="add KL(teacher || student) over each row's batch candidates, the teacher being the "
                        "student's own softmax with BETA x the candidate's BM25 score (row max = 1) added to its "
                        "logits: a lexical nudge toward products sharing the query's words (losses."
                        "LexicalDistillLoss; DATA_DIR/indices_bm25 when built, else an index built in memory); costs one "
                        "BM25 scoring of the catalog "
                        "per distinct query of each batch; 0 = off (default; it did not help on Home Depot)")
    p.add_argument("--logq", action="store_true", help="logQ-correct in-batch logits by product frequency")
    p.add_argument("--label-weights", type=parse_label_weights, default=None, metavar="E=1,S=0.9,C=0.6",
                   help="positive weight per ESCI label, overriding prepare's (E 1.0, S 0.9, C 0.6 from stage 3); "
                        "0 stops training on that label as a positive (its products stay masked, never negatives)")
    p.add_argument("--warmup", type=FRACTION, default=0.1, help="warmup fraction of each stage's steps")
    p.add_argument("--weight-decay", type=NONNEG_FLOAT, default=0.01)
    p.add_argument("--max-grad-norm", type=POSITIVE_FLOAT, default=1.0)
    p.add_argument("--save-steps", type=NONNEG_INT, default=0, help="also checkpoint every N optimiser steps")
    p.add_argument("--keep-checkpoints", type=NONNEG_INT, default=2,
                   help="step_N.pt files kept (newest; each costs a full checkpoint's disk; 0 = keep all)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from last.pt (or the given checkpoint)")
    p.add_argument("--patience", type=NONNEG_INT, default=0,
                   help="stop a stage after N epochs without improvement (by --select, even where "
                        "--min-val-queries makes best_model.pt the last epoch)")
    p.add_argument("--select", choices=sorted(SELECT), default="val_loss",
                   help="validation score that picks best_model.pt: val_loss (default; lower is better, the same "
                        "in-batch loss at every stage, steadier than the retrieval scores of a few dozen val "
                        "queries), recall+ndcg = Recall@10 + NDCG@10 (ties go to the lower val loss), recall@10, "
                        "or ndcg@10, or last (the newest epoch)")
    p.add_argument("--min-val-queries", type=NONNEG_INT, default=50, metavar="N",
                   help="with fewer validation queries (with an E product) than N, best_model.pt follows the last "
                        "epoch instead of --select: a few dozen queries cannot tell epochs apart (0 = always --select)")
    p.add_argument("--val-corpus-size", type=POSITIVE_INT, default=5000, help="random catalog products added to "
                   "the validation queries' judged products for validation retrieval")
    p.add_argument("--val-batches", type=NONNEG_INT, default=20, help="batches for the validation loss")
    p.add_argument("--device", default="auto")
    p.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                   help="also log scalars to this TensorBoard dir (needs: pip install -r requirements-tensorboard.txt)")
    p.add_argument("--init-checkpoint", type=Path, default=None, help="start stage 1 from this checkpoint")
    add_model_args(p)
    add_common_args(p, checkpoint_dir=True,
                    overwrite="this stage's finished checkpoint (stageN.pt) or an interrupted run of it")
    args = p.parse_args(argv)
    if args.negatives is None:  # resolved here, so train_config.json records what was used
        args.negatives = 0 if args.stage == 1 and args.loss == "infonce" else 1
    if args.focus_rank == "auto":
        args.focus_rank = FOCUS_RANK_STAGE3 if args.stage == 3 and args.hard_negatives == "mined" else 0
    elif args.focus_rank and args.stage > 1 and args.hard_negatives != "mined":
        p.error("--focus-rank needs the positive ranks of the mining step: --hard-negatives mined (or --focus-rank 0)")
    if args.loss == "triplet" and args.negatives < 1:
        p.error("--loss triplet needs explicit negatives: --negatives 1 or more")
    return args


def resume_source_done(args: argparse.Namespace) -> Path | None:
    """The --resume source when it records args.stage as finished (a no-op run), else None."""
    if not args.resume:
        return None
    if args.resume == "auto":
        return progress_path(args.checkpoint_dir) if stage_done(args.checkpoint_dir, args.stage) else None
    path = Path(args.resume)
    if not path.is_file():
        raise UserError(f"--resume: checkpoint not found: {path}")
    _, prog = load_train_state(path)
    return path if prog.get("stage_done") == args.stage else None


def require_tensorboard(args: argparse.Namespace) -> None:
    """--tensorboard's optional dependency, checked before any work rather than after the first epoch."""
    import importlib.util
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package, an optional extra: "
                        "pip install -r requirements-tensorboard.txt (or drop --tensorboard)")


def refuse_retraining(args: argparse.Namespace) -> None:
    """The suite's overwrite policy for training: without --resume, a finished stage (stageN.pt) or
    an interrupted run of it in last.pt is replaced only with --overwrite."""
    if args.resume or args.overwrite:
        return
    done = stage_checkpoint(args.checkpoint_dir, args.stage)
    if done.is_file():
        raise UserError(f"{done} exists (stage {args.stage} finished); pass --overwrite to train the stage again "
                        f"and replace it, or choose another --checkpoint-dir")
    prog = read_progress(args.checkpoint_dir)
    if prog.get("stage") == args.stage and prog.get("stage_done") != args.stage:
        raise UserError(f"{args.checkpoint_dir / 'last.pt'} holds an interrupted stage-{args.stage} run; pass "
                        f"--resume to continue it, or --overwrite to start the stage again")


def main(args: argparse.Namespace) -> dict:
    rank, world = init_distributed()
    set_seed(args.seed + rank)
    torch.manual_seed(args.seed)  # identical dropout streams: same result for any process count
    if args.batch_size != "auto" and args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    trainer = Trainer(args, rank, world)
    stage = args.stage
    done_in = resume_source_done(args)
    if done_in:
        log.info("stage %d is already complete in %s: nothing to resume, nothing changed (--resume)", stage, done_in)
        return {"stages": [], "skipped": stage}
    if stage == 1 and args.focus_rank:  # run_workflow.sh passes the same flags to every stage
        log.info("--focus-rank %d applies from stage 2 (stage 1 has no mining model): stage 1 trains on every "
                 "positive", args.focus_rank)
    require_tensorboard(args)
    if is_main_process():
        refuse_retraining(args)
        require_writable(args.checkpoint_dir, "--checkpoint-dir")
    trainer.continue_from(stage)
    trainer.run_stage(stage)
    metrics = trainer.metrics()
    if is_main_process():
        log.info("training done: best val %s %.4f (recall@10 %.4f; stage %s epoch %s)", trainer.select,
                 shown_score(trainer.select, trainer.best["score"]), trainer.best["recall@10"], trainer.best.get("stage"),
                 trainer.best["epoch"])
    if world > 1:
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
