"""Phase 4: train the two-tower model in stages, with checkpoints, exact resume and multi-process DDP.

Reads (--data-dir): training_pairs.parquet, val_pairs.parquet, products_clean.parquet,
ground_truth.parquet, and for stages 2-3 the mined hard_negatives_stage{2,3}.parquet.
Writes (--checkpoint-dir): epoch_N.pt (model), stage{N}.pt (model at the end of stage N),
best_model.pt (best validation Recall@10), last.pt (full resumable state; step_N.pt hard links
with --save-steps), train_log.jsonl (one line per step), train_metrics.json, train_config.json.

Stages (CHAPTER2_README "Training Stages"):
  1: epochs 1-2, E+S positives + random/labelled negatives, lr 2e-5
  2: epoch 3, adds hard negatives mined with the stage-1 model, lr 2e-5
  3: epochs 4-5, adds C positives (weights E 1.0 / S 0.9 / C 0.6), lr / 10
  all: 1 -> mine -> 2 -> mine again -> 3

Multi-process: torchrun --nproc_per_node N train_two_tower.py ... (NCCL on GPUs, gloo on CPUs);
embeddings are gathered so in-batch negatives span the global batch; only rank 0 writes.

Example (CPU, tiny sample, ~1 min):
    python prepare_training_data.py --make-sample tiny --data-dir /tmp/d
    python train_two_tower.py --stage 1 --data-dir /tmp/d --checkpoint-dir /tmp/ck --max-steps 5
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

import losses as L
from metrics import evaluate_run
from train_data import StageData, TokenStore, plan_epoch
from two_tower_model import TwoTowerModel, add_model_args, load_checkpoint_file, model_overrides
from utils import (UserError, add_common_args, args_to_config, barrier, bf16_supported, get_device,
                   init_distributed, is_main_process, load_catalog, load_prepared, log, read_json, run_cli, set_seed,
                   write_json)

STAGES = {1: {"epochs": 2, "lr_scale": 1.0}, 2: {"epochs": 1, "lr_scale": 1.0}, 3: {"epochs": 2, "lr_scale": 0.1}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["1", "2", "3", "all"], default="all")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split across processes)")
    p.add_argument("--lr", type=float, default=2e-5, help="stage 1-2 learning rate (stage 3 uses lr/10)")
    p.add_argument("--epochs", type=int, default=None, help="override the stage's epoch count")
    p.add_argument("--max-steps", type=int, default=None, help="stop each stage after this many steps")
    p.add_argument("--epoch-pairs", type=int, default=None,
                   help="train each epoch on a fresh random subset of this many positives (budgeted runs)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto = bf16 where the device runs it natively, else fp32")
    p.add_argument("--loss", choices=sorted(L.LOSSES), default="combined")
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (scale = 1/T)")
    p.add_argument("--margin", type=float, default=0.5, help="contrastive/triplet cosine-distance margin")
    p.add_argument("--contrastive-weight", type=float, default=0.5, help="mixing weight in the combined loss")
    p.add_argument("--negatives", type=int, default=1, help="explicit negatives per positive")
    p.add_argument("--logq", action="store_true", help="logQ-correct in-batch logits by product frequency")
    p.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of each stage's steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--save-steps", type=int, default=0, help="also checkpoint every N optimiser steps")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from last.pt (or the given checkpoint)")
    p.add_argument("--patience", type=int, default=0, help="stop a stage after N epochs without improvement")
    p.add_argument("--val-corpus-size", type=int, default=5000, help="random catalog products added to "
                   "the validation queries' judged products for validation retrieval")
    p.add_argument("--val-batches", type=int, default=20, help="batches for the validation loss")
    p.add_argument("--num-workers", type=int, default=0, help="accepted for CLI compatibility; batches are "
                   "pre-tokenised, so collation runs in-process")
    p.add_argument("--device", default="auto")
    p.add_argument("--tensorboard", type=Path, default=None, help="also log scalars to this TensorBoard dir")
    p.add_argument("--init-checkpoint", type=Path, default=None, help="start stage 1 from this checkpoint")
    add_model_args(p)
    add_common_args(p, checkpoint_dir=True)
    args = p.parse_args(argv)
    if args.batch_size < 2:
        p.error("--batch-size must be at least 2 (in-batch negatives)")
    return args


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------
def lr_lambda(total: int, warmup: float):
    """Linear warmup over `warmup` of the steps, then linear decay to 0."""
    w = max(1, int(total * warmup))
    return lambda s: (s + 1) / w if s < w else max(0.0, (total - s) / max(1, total - w))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), None))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class Trainer:
    def __init__(self, args: argparse.Namespace, rank: int, world: int):
        self.args, self.rank, self.world = args, rank, world
        self.device = get_device(args.device if world == 1 or not torch.cuda.is_available()
                                 else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        self.ckdir = args.checkpoint_dir
        d = args.data_dir
        self.products = load_catalog(d)
        self.catalog_index = pd.Series(np.arange(len(self.products)), index=self.products["product_id"].to_numpy())
        self.ground_truth = load_prepared(d, "ground_truth")
        self.precision = args.precision
        if self.precision == "auto":
            self.precision = "bf16" if bf16_supported(self.device) else "fp32"
        if self.precision == "fp16" and self.device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        self.log_file = None
        self.tb = None
        self.best = {"recall@10": -1.0, "epoch": None}
        self.history: list[dict] = []
        self._p_tok: dict[int, TokenStore] = {}

    # -- model -----------------------------------------------------------------------------------
    def build_model(self, stage: int) -> tuple[TwoTowerModel, dict | None]:
        """Stage 1 starts from the base model (or --init-checkpoint); stage N from stage{N-1}.pt."""
        a = self.args
        if stage == 1:
            src = a.init_checkpoint or a.base_model
            model = TwoTowerModel.from_pretrained(src, **({} if a.init_checkpoint else model_overrides(a)))
            start_epoch = 0
        else:
            prev = self.ckdir / f"stage{stage - 1}.pt"
            if not prev.is_file():
                raise UserError(f"stage {stage} starts from the stage-{stage - 1} model {prev}, which does not "
                                f"exist; run train_two_tower.py --stage {stage - 1} first")
            model = TwoTowerModel.from_pretrained(prev)
            start_epoch = int(model.progress.get("epoch", 0))
        return model.to(self.device), {"start_epoch": start_epoch}

    def data_for(self, stage: int, split: str) -> StageData:
        files = []
        if stage >= 2:
            f2 = self.args.data_dir / "hard_negatives_stage2.parquet"
            if not f2.is_file():
                raise UserError(f"stage {stage} needs hard negatives {f2}; run hard_negative_mining.py "
                                f"--checkpoint {self.ckdir / 'stage1.pt'} --output {f2} first")
            f3 = self.args.data_dir / "hard_negatives_stage3.parquet"
            files = [f3 if (stage == 3 and f3.is_file()) else f2]
        return StageData(self.args.data_dir, split, stage if split == "train" else 3,
                         files if split == "train" else [], self.catalog_index)

    # -- one stage ---------------------------------------------------------------------------------
    def run_stage(self, stage: int) -> dict:
        a = self.args
        model, info = self.build_model(stage)
        tok = model.tokenizer
        data = self.data_for(stage, "train")
        val = self.data_for(stage, "val")
        log.info("stage %d: %s positives over %s queries, negatives %s", stage, f"{data.counts['positives']:,}",
                 f"{data.counts['queries']:,}", data.counts["negatives"])
        q_tok = TokenStore(tok, data.query_texts, model.config.query_max_len)
        vq_tok = TokenStore(tok, val.query_texts, model.config.query_max_len)
        key = model.config.product_max_len
        if key not in self._p_tok:  # the catalog is tokenised once per run, not per stage
            self._p_tok[key] = TokenStore(tok, self.products["product_text"].tolist(), key)
        p_tok = self._p_tok[key]
        masks = self._judged_by_qidx(data), self._judged_by_qidx(val)
        logq = self._logq(data) if a.logq else None
        epochs = a.epochs or STAGES[stage]["epochs"]
        lr = a.lr * STAGES[stage]["lr_scale"]
        # epoch 1's plan sets the schedule length; it is reused when stage 1 trains epoch 1
        plan1 = plan_epoch(data, p_tok.lengths, a.batch_size, a.negatives, a.seed, 1, epoch_pairs=a.epoch_pairs)
        steps_per_epoch = math.ceil(len(plan1) / a.grad_accum)
        total = steps_per_epoch * epochs if a.max_steps is None else min(a.max_steps, steps_per_epoch * epochs)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                weight_decay=a.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, a.warmup))
        loss_fn = self._loss()
        pos = {"stage": stage, "epoch": info["start_epoch"] + 1, "batch": 0, "step": 0}
        resumed = self._maybe_resume(stage, model, opt, sched, pos)
        if self.world > 1:
            for p in model.parameters():
                dist.broadcast(p.data, 0)
        first_epoch = pos["epoch"]
        last_epoch = info["start_epoch"] + epochs
        no_improve = 0
        epoch = first_epoch - 1
        t_stage = time.perf_counter()
        pairs_done = 0
        for epoch in range(first_epoch, last_epoch + 1):
            batches = plan1 if epoch == 1 else plan_epoch(data, p_tok.lengths, a.batch_size, a.negatives,
                                                          a.seed, epoch, epoch_pairs=a.epoch_pairs)
            start = pos["batch"] if (resumed and epoch == first_epoch) else 0
            model.train()
            bar = tqdm(total=len(batches), initial=start, desc=f"stage {stage} epoch {epoch}", unit="batch",
                       disable=not is_main_process(), mininterval=5)
            for bi in range(start, len(batches)):
                if pos["step"] >= total:
                    break
                loss, stats = self._forward(model, batches[bi], q_tok, p_tok, loss_fn, masks[0], logq)
                (loss / a.grad_accum).backward()
                pairs_done += len(batches[bi].q_rows)
                bar.update(1)
                if (bi + 1) % a.grad_accum and bi + 1 < len(batches):
                    continue
                gnorm = self._optimizer_step(model, opt, sched)
                pos.update(epoch=epoch, batch=bi + 1, step=pos["step"] + 1)
                rate = pairs_done / (time.perf_counter() - t_stage)
                self._log_step({"stage": stage, "epoch": epoch, "step": pos["step"], "loss": round(loss.item(), 5),
                                "lr": sched.get_last_lr()[0], "grad_norm": round(gnorm, 4),
                                "pairs_per_s": round(rate, 2), "elapsed_s": round(time.perf_counter() - t_stage, 3),
                                **stats})
                bar.set_postfix(loss=f"{loss.item():.4f}", pairs_s=f"{rate:.1f}")
                if a.save_steps and pos["step"] % a.save_steps == 0:
                    self._save_state(model, opt, sched, pos, keep_step=True)
            bar.close()
            finished = pos["batch"] >= len(batches)
            vm = self.validate(model, val, vq_tok, p_tok, loss_fn, masks[1])
            vm.update(stage=stage, epoch=epoch, step=pos["step"], complete_epoch=finished)
            self.history.append(vm)
            log.info("stage %d epoch %d: val loss %.4f  recall@10 %.4f  mrr %.4f", stage, epoch, vm["val_loss"],
                     vm["recall@10"], vm["mrr"])
            improved = vm["recall@10"] > self.best["recall@10"]  # same decision on every rank
            meta = {"progress": {**pos, "epoch": epoch}, "val": vm}
            if is_main_process():
                model.save(self.ckdir / f"epoch_{epoch}.pt", extra=meta)
                if improved:
                    model.save(self.ckdir / "best_model.pt", extra=meta)
            if improved:
                self.best = {"recall@10": vm["recall@10"], "epoch": epoch, "stage": stage}
            no_improve = 0 if improved else no_improve + 1
            pos.update(epoch=epoch + 1, batch=0)
            self._save_state(model, opt, sched, pos)
            if pos["step"] >= total or (a.patience and no_improve >= a.patience):
                break
        if is_main_process():
            model.save(self.ckdir / f"stage{stage}.pt", extra={"progress": {"stage": stage, "epoch": epoch}})
            self._save_state(model, opt, sched, {**pos, "stage_done": stage})
        barrier()
        return {"stage": stage, "epochs": epoch - info["start_epoch"], "steps": pos["step"],
                "seconds": round(time.perf_counter() - t_stage, 1),
                "pairs_per_s": round(pairs_done / max(time.perf_counter() - t_stage, 1e-9), 2)}

    # -- pieces --------------------------------------------------------------------------------------
    def _loss(self) -> torch.nn.Module:
        a = self.args
        if a.loss == "combined":
            return L.CombinedLoss(a.temperature, a.margin, a.contrastive_weight)
        if a.loss == "infonce":
            return L.InBatchNegativesLoss(a.temperature)
        return L.LOSSES[a.loss](a.margin)

    def _judged_by_qidx(self, data: StageData) -> dict[int, set]:
        """qidx -> catalog rows judged E/S/C for that query (never negatives, whatever the stage)."""
        gt = self.ground_truth[self.ground_truth["esci_label"].isin(["E", "S", "C"])]
        qmap = pd.Series(np.arange(len(data.query_ids)), index=data.query_ids)
        qi = qmap.reindex(gt["query_id"].to_numpy()).to_numpy()
        pr = self.catalog_index.reindex(gt["product_id"].to_numpy()).to_numpy()
        ok = ~(np.isnan(qi) | np.isnan(pr))
        out: dict[int, set] = {}
        for q, p in zip(qi[ok].astype(int).tolist(), pr[ok].astype(int).tolist()):
            out.setdefault(q, set()).add(p)
        return out

    def _logq(self, data: StageData) -> np.ndarray:
        """Per catalog row: log(sampling probability) - log(uniform), 0 for never-sampled rows."""
        lq = L.log_sampling_probabilities(data.pos_p)
        out = np.zeros(len(self.products), dtype=np.float32)
        rows = np.fromiter(lq.keys(), dtype=np.int64)
        out[rows] = np.fromiter(lq.values(), dtype=np.float64) + math.log(len(rows))
        return out

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def _embed_global(self, model, store: TokenStore, rows: np.ndarray, side: str) -> torch.Tensor:
        """Embed this process's slice of `rows` and gather the global batch (gradients flow back)."""
        if self.world == 1:
            return model.embed(store.batch(rows), side)
        parts = np.array_split(rows, self.world)
        local = model.embed(store.batch(parts[self.rank]), side) if len(parts[self.rank]) else None
        import torch.distributed.nn.functional as dnn
        n = max(len(x) for x in parts)
        d = model.config.embedding_dim
        padded = torch.zeros(n, d, device=self.device)
        if local is not None:
            padded = torch.cat([local, padded[len(local):]]) if len(local) < n else local
        gathered = dnn.all_gather(padded)
        return torch.cat([g[:len(x)] for g, x in zip(gathered, parts)])

    def _forward(self, model, b, q_tok, p_tok, loss_fn, judged, logq):
        neg_flat = b.neg_rows.reshape(-1)
        valid = neg_flat >= 0
        with self._autocast():
            q = self._embed_global(model, q_tok, b.q_rows, "query")  # (b, d)
            p = self._embed_global(model, p_tok, b.p_rows, "product")  # (b, d)
            n = None
            if valid.any():
                n_valid = self._embed_global(model, p_tok, neg_flat[valid], "product")  # (m, d)
                n = torch.zeros(len(neg_flat), q.shape[1], device=q.device, dtype=n_valid.dtype)
                n[torch.from_numpy(np.flatnonzero(valid)).to(q.device)] = n_valid
                n = n.reshape(len(b.q_rows), -1, q.shape[1])  # (b, k, d)
        w = torch.from_numpy(b.weights).to(q.device)
        stats = {"pos_cos": round(float((q * p).detach().sum(-1).mean()), 4)}
        if isinstance(loss_fn, (L.CombinedLoss, L.InBatchNegativesLoss)):
            cand = np.concatenate([b.p_rows, np.where(valid, neg_flat, -1)]) if n is not None else b.p_rows
            mask = L.accidental_hit_mask(b.q_rows, b.p_rows, cand, judged).to(q.device)
            lq = torch.from_numpy(np.where(cand >= 0, logq[np.maximum(cand, 0)], 0.0)).to(q.device) \
                if logq is not None else None
            kw = {"negative_valid": torch.from_numpy(valid.reshape(len(b.q_rows), -1)).to(q.device)} \
                if isinstance(loss_fn, L.CombinedLoss) and n is not None else {}
            loss = loss_fn(q, p, n, w, mask=mask, log_q=lq, **kw)
            stats["masked"] = int(mask.sum()) - int(mask.diagonal().sum())
        elif isinstance(loss_fn, L.TripletLoss):
            if n is None:
                raise UserError("--loss triplet needs explicit negatives (--negatives >= 1)")
            loss = loss_fn(q, p, n, w, negative_mask=torch.from_numpy(~valid.reshape(len(b.q_rows), -1)))
        else:  # contrastive pairs: positives and their explicit negatives
            qq = torch.cat([q, q.repeat_interleave(len(neg_flat) // len(b.q_rows), 0)[torch.from_numpy(valid)]]) \
                if n is not None else q
            pp = torch.cat([p, n.reshape(-1, q.shape[1])[torch.from_numpy(valid)]]) if n is not None else p
            y = torch.cat([torch.ones(len(q)), torch.zeros(len(pp) - len(q))]).to(q.device)
            ww = torch.cat([w, torch.ones(len(pp) - len(q), device=q.device)])
            loss = loss_fn(qq, pp, y, ww)
        if n is not None and valid.any():
            stats["neg_cos"] = round(float(torch.einsum("bd,bkd->bk", q.detach(), n.detach()).reshape(-1)[
                torch.from_numpy(valid).to(q.device)].mean()), 4)
        stats["emb_mean_norm"] = round(float(p.detach().float().mean(0).norm()), 4)
        return loss, stats

    def _optimizer_step(self, model, opt, sched) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        if self.world > 1:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= self.world
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return gnorm

    @torch.no_grad()
    def validate(self, model, val: StageData, vq_tok, p_tok, loss_fn, judged) -> dict:
        """Validation loss on fixed batches + Recall@10/MRR of val queries on a bounded corpus."""
        model.eval()
        a = self.args
        batches = plan_epoch(val, p_tok.lengths, a.batch_size, a.negatives, a.seed, 0)[:a.val_batches]
        losses = []
        for b in batches:
            loss, _ = self._forward(model, b, vq_tok, p_tok, loss_fn, judged, None)
            losses.append(float(loss))
        gt = self.ground_truth[self.ground_truth["split"] == "val"]
        rng = np.random.default_rng(a.seed)
        sample = rng.choice(len(self.products), size=min(a.val_corpus_size, len(self.products)), replace=False)
        judged_rows = self.catalog_index.reindex(gt["product_id"].unique()).dropna().astype(int).to_numpy()
        corpus = np.unique(np.concatenate([sample, judged_rows]))
        res = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
        if is_main_process():
            pe = model.encode_products(self.products["product_text"].to_numpy()[corpus].tolist())
            queries = gt.drop_duplicates("query_id")
            qe = model.encode_queries(queries["query"].tolist())
            top = np.argsort(-(qe @ pe.T), axis=1)[:, :100]
            ids = self.products["product_id"].to_numpy()[corpus]
            run = {q: ids[t].tolist() for q, t in zip(queries["query_id"], top)}
            qrels = {q: dict(zip(g["product_id"], g["esci_label"])) for q, g in gt.groupby("query_id")}
            m, _ = evaluate_run(run, qrels, ("E",), ks=(10, 100))
            res.update({"recall@10": m["recall@10"], "recall@100": m["recall@100"], "ndcg@10": m["ndcg@10"],
                        "mrr": m["mrr"], "val_queries": m["queries"], "val_corpus": len(corpus)})
        if self.world > 1:
            box = [res]
            dist.broadcast_object_list(box, 0)
            res = box[0]
        model.train()
        return res

    # -- checkpoints and logs ---------------------------------------------------------------------
    def _save_state(self, model, opt, sched, pos, keep_step: bool = False) -> None:
        if not is_main_process():
            return
        extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(),
                 "progress": dict(pos), "best": self.best, "history": json.dumps(self.history),
                 "train_config": json.dumps(args_to_config(self.args))}
        last = self.ckdir / "last.pt"
        model.save(last, extra=extra)
        if keep_step:  # a hard link: a step checkpoint costs no extra disk
            step = self.ckdir / f"step_{pos['step']}.pt"
            step.unlink(missing_ok=True)
            os.link(last, step)

    def _maybe_resume(self, stage, model, opt, sched, pos) -> bool:
        a = self.args
        if not a.resume:
            return False
        path = self.ckdir / "last.pt" if a.resume == "auto" else Path(a.resume)
        if not path.is_file():
            if a.resume != "auto":
                raise UserError(f"--resume: checkpoint not found: {path}")
            log.info("--resume: no %s yet, starting stage %d from the beginning", path, stage)
            return False
        state = load_checkpoint_file(path)
        prog = state.get("progress", {})
        if "optimizer" not in state:
            raise UserError(f"{path} holds model weights only; --resume needs last.pt or a step_N.pt")
        if prog.get("stage") != stage or prog.get("stage_done") == stage:
            return False
        saved = TwoTowerModel.from_payload(state, str(path))
        model.check_compatible(saved.config.base_model, saved.config.embedding_dim, source=str(path))
        model.load_state_dict(saved.state_dict())
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        pos.update({k: prog[k] for k in ("epoch", "batch", "step")})
        self.best = state.get("best", self.best)
        self.history = json.loads(state.get("history", "[]"))
        log.info("resumed stage %d from %s at epoch %d, batch %d, step %d", stage, path, pos["epoch"],
                 pos["batch"], pos["step"])
        return True

    def _log_step(self, rec: dict) -> None:
        if not is_main_process():
            return
        if self.log_file is None:
            self.ckdir.mkdir(parents=True, exist_ok=True)
            self.log_file = open(self.ckdir / "train_log.jsonl", "a")
            if self.args.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self.tb = SummaryWriter(str(self.args.tensorboard))
                except ImportError:
                    log.warning("--tensorboard needs the tensorboard package (pip install tensorboard)")
        self.log_file.write(json.dumps(rec) + "\n")
        self.log_file.flush()
        if self.tb:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("stage", "epoch", "step"):
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])


def stage_done(ckdir: Path, stage: int) -> bool:
    """A stage is complete when last.pt records it as done and stage{N}.pt exists."""
    last = ckdir / "last.pt"
    if not (ckdir / f"stage{stage}.pt").is_file() or not last.is_file():
        return False
    done = load_checkpoint_file(last).get("progress", {}).get("stage_done", 0)
    return done >= stage


def mine_between(args: argparse.Namespace, stage: int) -> None:
    """--stage all: mine hard negatives with the just-trained model for the next stage."""
    import hard_negative_mining as hnm
    out = args.data_dir / f"hard_negatives_stage{stage + 1}.parquet"
    argv = ["--checkpoint", str(args.checkpoint_dir / f"stage{stage}.pt"), "--output", str(out),
            "--data-dir", str(args.data_dir), "--seed", str(args.seed), "--overwrite"]
    if is_main_process():
        hnm.main(hnm.parse_args(argv))
    barrier()


def main(args: argparse.Namespace) -> dict:
    rank, world = init_distributed()
    set_seed(args.seed + rank)
    torch.manual_seed(args.seed)  # identical dropout streams: same result for any process count
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    trainer = Trainer(args, rank, world)
    if is_main_process():
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json(args.checkpoint_dir / "train_config.json", {**args_to_config(args), "world_size": world,
                                                                "precision": trainer.precision})
    stages = [1, 2, 3] if args.stage == "all" else [int(args.stage)]
    results = []
    prev = args.checkpoint_dir / "train_metrics.json"
    if prev.is_file() and (args.resume or stages[0] > 1):
        # continuing the schedule in a new process: best_model.pt must beat the earlier stages' best
        old = read_json(prev)
        trainer.best = old.get("best", trainer.best)
        trainer.history = [h for h in old.get("history", []) if h.get("stage", 0) < stages[0]]
        results = [r for r in old.get("stages", []) if r.get("stage", 0) < stages[0]]
    for s in stages:
        if args.resume and stage_done(args.checkpoint_dir, s):
            log.info("stage %d already complete, skipping (--resume)", s)
            continue
        if args.stage == "all" and s >= 2:
            target = args.data_dir / f"hard_negatives_stage{s}.parquet"
            if not (args.resume and target.is_file()):
                mine_between(args, s - 1)
        results.append(trainer.run_stage(s))
    metrics = {"stages": results, "best": trainer.best, "history": trainer.history, "world_size": world,
               "precision": trainer.precision}
    if is_main_process():
        write_json(args.checkpoint_dir / "train_metrics.json", metrics)
        log.info("training done: best val recall@10 %.4f (stage %s epoch %s)", trainer.best["recall@10"],
                 trainer.best.get("stage"), trainer.best["epoch"])
    if world > 1:
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
