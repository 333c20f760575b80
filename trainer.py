"""The staged two-tower trainer behind train_two_tower.py: one Trainer runs a stage (data, masks,
optimizer and schedule; epochs of steps; validation and model selection; exact resume from
last.pt; the step log and stats files). train_two_tower.py parses the command line, refuses
unsafe reruns and calls Trainer.run_stage; tests and bench_train drive the same class.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

import losses as L
from augment import augment_queries, pseudo_query_pairs
from checkpoint import load_train_state, read_progress, save_train_state, set_rng_state, trim_step_log
from metrics import evaluate_run
from train_data import GRADE, Batch, StageData, TokenStore, plan_epoch, topic_clusters
from train_embed import autocast, embed_global
from train_ops import freeze_lower_layers, make_optimizer, set_dropout, use_fast_dropout
from train_parts import (SELECT, auto_batch_size, best_of, better, ignored_model_flags, judged_sets, loss_inputs,
                         lr_lambda, selection_rule, shown_score)
from two_tower_model import TwoTowerModel, model_overrides
from cli import args_to_config, progress
from fileio import atomic_path, load_catalog, load_prepared, require_file, write_json
from paths import best_checkpoint, hard_negatives_path, last_checkpoint, positive_ranks_path, stage_checkpoint
from utils import UserError, barrier, bf16_supported, get_device, is_main_process, log, widen_onednn_cache

TOPIC_MAX_CLUSTERS = 1024  # --topic-batches
STAGES = {1: {"epochs": 1, "lr_scale": 1.0}, 2: {"epochs": 1, "lr_scale": 1.0}, 3: {"epochs": 1, "lr_scale": 0.1}}


class Trainer:
    def __init__(self, args: argparse.Namespace, rank: int, world: int):
        self.args, self.rank, self.world = args, rank, world
        self.device = get_device(args.device if world == 1 or not torch.cuda.is_available()
                                 else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        if self.device.type == "cpu":
            widen_onednn_cache()  # before the first matmul: length groups meet thousands of shapes
        self.ckdir = args.checkpoint_dir
        self.pseudo_count = 0  # stage 1's --pseudo-queries positives, for its stats
        d = args.data_dir
        self.products = load_catalog(d)
        self.catalog_index = pd.Series(np.arange(len(self.products)), index=self.products["product_id"].to_numpy())
        self.ground_truth = load_prepared(d, "ground_truth")
        gt = self.ground_truth
        self.val_queries = int(gt.loc[(gt["split"] == "val") & (gt["esci_label"] == "E"), "query_id"].nunique())
        # the rule that picks best_model.pt (args.select, unless the val set is too small to decide)
        self.select, self.select_why = selection_rule(args.select, self.val_queries, args.min_val_queries)
        if self.select_why:
            log.warning("%s", self.select_why)
        self.precision = args.precision
        if self.precision == "auto":
            self.precision = "bf16" if bf16_supported(self.device) else "fp32"
        if self.precision == "fp16" and self.device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        # --length-groups auto: on the CPU, whose time grows with every pad token; a GPU runs one
        # padded batch about as fast as several smaller ones
        self.length_groups = args.length_groups == "on" or (args.length_groups == "auto" and self.device.type == "cpu")
        self._topics: np.ndarray | None = None  # --topic-batches: cluster id per query index of the stage
        self.fast_dropout = args.dropout_kernel == "fast" or (args.dropout_kernel == "auto"
                                                              and self.device.type == "cpu")
        self.loss_fn = L.build_loss(args.loss, args.temperature, args.margin, args.contrastive_weight,
                                    args.symmetric)
        # --lexical-distill: BM25 over the catalog (loaded or built on first use) re-ranks the teacher
        self.distill = L.LexicalDistillLoss(args.temperature, args.lexical_distill) if args.lexical_distill else None
        self._bm25 = None
        self.log_file = None
        self.tb = None
        # the one record of where training is: saved in last.pt and mirrored in progress.json
        self.best = {"recall@10": -1.0, "score": None, "epoch": None}
        self.history: list[dict] = []
        self.results: list[dict] = []
        self._p_tok: dict[tuple, TokenStore] = {}
        self.batch_size = args.batch_size  # an integer once a stage is set up (auto resolved per stage)

    def continue_from(self, first_stage: int) -> None:
        """Carry best/history/results of the stages before `first_stage` (same checkpoint dir)."""
        prog = read_progress(self.ckdir)
        if first_stage > 1 and prog:
            self.history = [h for h in prog.get("history", []) if h.get("stage", 0) < first_stage]
            self.results = [r for r in prog.get("stages", []) if r.get("stage", 0) < first_stage]
            self.best = prog.get("best", self.best)
            rule_changed = self.best.get("select") not in (None, self.select)  # scores would not compare
            if rule_changed or len(self.history) < len(prog.get("history", [])):
                self._best_before(first_stage)

    def _best_before(self, first_stage: int) -> None:
        """A redo of stage `first_stage` starts from the best of the stages before it, not from the
        best of the run it replaces: best_model.pt goes back to that earlier epoch's model. Also
        used when the selection rule changed since those stages ran (their scores would not compare)."""
        vm = best_of(self.history, self.select)
        self.best = self._best_record(vm) if vm else {"recall@10": -1.0, "score": None, "epoch": None}
        src = self.ckdir / f"epoch_{self.best['epoch']}.pt"
        if self.best["epoch"] is not None and src.is_file() and is_main_process():
            with atomic_path(best_checkpoint(self.ckdir)) as tmp:
                shutil.copyfile(src, tmp)
            log.info("stage %d: best_model.pt is again the stage-%s epoch-%s model (%s %.4f) until this stage "
                     "beats it", first_stage, self.best["stage"], self.best["epoch"],
                     self.select, shown_score(self.select, self.best["score"]))

    # -- model and data ------------------------------------------------------------------------
    def build_model(self, stage: int) -> tuple[TwoTowerModel, int]:
        """Stage 1 starts from the base model (or --init-checkpoint); stage N from stage{N-1}.pt."""
        a = self.args
        if stage == 1:
            src = a.init_checkpoint or a.base_model
            model = TwoTowerModel.from_pretrained(src, **({} if a.init_checkpoint else model_overrides(a)))
            start_epoch = 0
        else:
            prev = stage_checkpoint(self.ckdir, stage - 1)
            if not prev.is_file():
                raise UserError(f"stage {stage} starts from the stage-{stage - 1} model {prev}, which does not "
                                f"exist; run train_two_tower.py --stage {stage - 1} first")
            model = TwoTowerModel.from_pretrained(prev)
            start_epoch = int(model.progress.get("epoch", 0))
            for flag, (given, kept) in ignored_model_flags(a, model.config).items():
                log.warning("%s %s is ignored at stage %d: the model is rebuilt from %s, which has %s", flag, given,
                            stage, prev.name, kept)
        if a.dropout is not None:  # a training setting, not the model's: checkpoints keep the encoder's config
            layers = set_dropout(model, a.dropout)
            log.info("stage %d: dropout %g in %d dropout layers (--dropout)", stage, a.dropout, layers)
        if self.fast_dropout:  # the training stream only: eval forwards and saved checkpoints are unchanged
            use_fast_dropout(model)
        if a.freeze_layers:  # before the optimizer is made: it gets only what still trains
            n = freeze_lower_layers(model, a.freeze_layers)
            log.info("stage %d: embeddings and the lowest %d layers kept fixed (%s parameters; --freeze-layers)",
                     stage, a.freeze_layers, f"{n:,}")
        return model.to(self.device), start_epoch

    def data_for(self, stage: int, split: str) -> StageData:
        files = []
        if stage >= 2 and split == "train" and self.args.hard_negatives == "mined":
            f = hard_negatives_path(self.args.data_dir, stage)
            if not f.is_file():
                raise UserError(f"stage {stage} needs the hard negatives {f}, mined with the stage-{stage - 1} model; "
                                f"run hard_negative_mining.py --checkpoint {stage_checkpoint(self.ckdir, stage - 1)} "
                                f"--output {f} first")
            files = [f]
        focus = None
        if split == "train" and files and self.args.focus_rank:
            ranks = require_file(positive_ranks_path(files[0]), "the positive ranks of the mining step",
                                 f"re-run hard_negative_mining.py --output {files[0]} (it writes them), or pass "
                                 f"--focus-rank 0 to train on every positive")
            focus = (ranks, self.args.focus_rank)
        extra = None
        if split == "train" and stage == 1 and self.args.pseudo_queries:
            extra = self.pseudo_queries()
        return StageData(self.args.data_dir, split, stage if split == "train" else 3, files, self.catalog_index,
                         self.args.label_weights if split == "train" else None, focus, extra)

    def pseudo_queries(self) -> pd.DataFrame:
        """--pseudo-queries N: title-span queries of N catalog products (augment.py), each an E
        positive of its product at stage 1, under query ids -1, -2, ... (prepare's are >= 0)."""
        spans = pseudo_query_pairs(self.products["product_id"], self.products["product_text"], self.args.pseudo_queries)
        spans = spans.assign(query_id=-1 - spans["pick"].to_numpy(np.int64))
        log.info("stage 1: --pseudo-queries %d: %s title-span positives of catalog products (e.g. %s)",
                 self.args.pseudo_queries, f"{len(spans):,}", ", ".join(repr(q) for q in spans["query"].head(3)))
        self.pseudo_count = len(spans)
        return spans

    def _judged_by_qidx(self, data: StageData) -> dict:
        """The judged E/S/C products that rows of each query must not treat as negatives, whatever
        the stage (train_parts.judged_sets; graded with --graded-mask)."""
        gt = self.ground_truth[self.ground_truth["esci_label"].isin(["E", "S", "C"])]
        qmap = pd.Series(np.arange(len(data.query_ids)), index=data.query_ids)
        qi = qmap.reindex(gt["query_id"].to_numpy()).to_numpy()
        pr = self.catalog_index.reindex(gt["product_id"].to_numpy()).to_numpy()
        ok = ~(np.isnan(qi) | np.isnan(pr))
        grades = gt["esci_label"].map(GRADE).to_numpy()[ok]
        return judged_sets(qi[ok].astype(np.int64), pr[ok].astype(np.int64), grades, self.args.graded_mask)

    def _logq(self, data: StageData) -> np.ndarray:
        """Per catalog row: log(sampling probability) - log(uniform), 0 for never-sampled rows."""
        lq = L.log_sampling_probabilities(data.pos_p)
        out = np.zeros(len(self.products), dtype=np.float32)
        rows = np.fromiter(lq.keys(), dtype=np.int64)
        out[rows] = np.fromiter(lq.values(), dtype=np.float64) + math.log(len(rows))
        return out

    # -- one stage -------------------------------------------------------------------------------
    def run_stage(self, stage: int) -> dict:
        """Train one stage: set up, then epochs (each ending in validate/save/patience)."""
        a = self.args
        model, start_epoch = self.build_model(stage)
        st = self._setup(stage, model)
        pos = {"stage": stage, "epoch": start_epoch + 1, "batch": 0, "step": 0}
        resumed = self._maybe_resume(stage, model, st["opt"], st["sched"], pos)
        if is_main_process():  # only once the stage is set up: a run that fails before keeps the old record
            write_json(self.ckdir / "train_config.json", {**args_to_config(a), "world_size": self.world,
                                                          "precision": self.precision,
                                                          "batch_size_used": self.batch_size})
        if self.world > 1:
            for p in model.parameters():
                dist.broadcast(p.data, 0)
        last_epoch = start_epoch + st["epochs"]
        no_improve, epoch = 0, pos["epoch"] - 1
        t0, done = time.perf_counter(), [0]
        for epoch in range(pos["epoch"], last_epoch + 1):
            batches = st["plan1"] if epoch == 1 else self._plan(st["data"], st["p_tok"], epoch)
            start = pos["batch"] if resumed and epoch == pos["epoch"] else 0
            self._train_epoch(model, {**st, "q_tok": self._epoch_queries(st, model, epoch)}, batches, start, pos,
                              epoch, t0, done)
            improved = self._end_epoch(model, st, pos, epoch, complete=pos["batch"] >= len(batches))
            no_improve = 0 if improved else no_improve + 1
            if pos["step"] >= st["total"] or (a.patience and no_improve >= a.patience):
                break
        seconds = time.perf_counter() - t0
        result = {"stage": stage, "epochs": epoch - start_epoch, "steps": pos["step"], "seconds": round(seconds, 1),
                  "pairs_per_s": round(done[0] / max(seconds, 1e-9), 2),
                  "improved_best": self.best.get("stage") == stage, "focus": st["data"].focus,
                  "positives": st["data"].counts["positives"], "pseudo_queries": self.pseudo_count if stage == 1 else 0}
        if stage > 1 and not result["improved_best"]:
            log.info("stage %d did not improve validation (%s); best_model.pt stays the stage-%s epoch-%s model",
                     stage, self.select, self.best.get("stage"), self.best.get("epoch"))
        self.results.append(result)
        if is_main_process():  # the stage's model, then its metrics, then the record that it is done
            model.save(stage_checkpoint(self.ckdir, stage), extra={"progress": {"stage": stage, "epoch": epoch}})
            write_json(self.ckdir / "train_metrics.json", self.metrics())
            self._save_state(model, st, {**pos, "stage_done": stage})
        barrier()
        return result

    def _best_record(self, vm: dict) -> dict:
        """What best/progress keep of the validation result `vm` that became the best."""
        return {"recall@10": vm["recall@10"], "ndcg@10": vm["ndcg@10"], "val_loss": vm["val_loss"],
                "score": SELECT[self.select](vm), "select": self.select, "epoch": vm["epoch"],
                "stage": vm["stage"]}

    def metrics(self) -> dict:
        return {"stages": self.results, "best": self.best, "history": self.history, "world_size": self.world,
                "selection": {"select": self.select, "asked": self.args.select, "why": self.select_why,
                              "val_queries": self.val_queries},
                "precision": self.precision}

    def _setup(self, stage: int, model: TwoTowerModel) -> dict:
        """Data, token stores, masks, optimizer and schedule of a stage."""
        a = self.args
        data, val = self.data_for(stage, "train"), self.data_for(stage, "val")
        log.info("stage %d: %s positives over %s queries, negatives %s", stage, f"{data.counts['positives']:,}",
                 f"{data.counts['queries']:,}", data.counts["negatives"])
        tok = model.tokenizer
        key = (model.config.product_max_len, model.config.product_prompt)
        if key not in self._p_tok:  # the catalog is tokenised once per run, not per stage
            self._p_tok[key] = TokenStore(tok, model.prompted(self.products["product_text"].tolist(), "product"),
                                          model.config.product_max_len)
        p_tok = self._p_tok[key]
        epochs = a.epochs or STAGES[stage]["epochs"]
        self.batch_size = a.batch_size
        per_epoch = min(a.epoch_pairs or len(data.pos_q), len(data.pos_q))
        if a.batch_size == "auto":
            self.batch_size = auto_batch_size(per_epoch, self.world)
            log.info("stage %d: batch size %d (auto: %s positives per epoch)", stage, self.batch_size, f"{per_epoch:,}")
        topic_k = min(TOPIC_MAX_CLUSTERS, max(1, round(per_epoch / self.batch_size)))  # about a cluster a batch
        self._topics = (self._topic_clusters(model, data, stage, topic_k)
                        if a.topic_batches and not a.distinct_queries else None)
        # epoch 1's plan sets the schedule length; it is reused when stage 1 trains epoch 1
        plan1 = self._plan(data, p_tok, 1)
        steps_per_epoch = math.ceil(len(plan1) / a.grad_accum)
        total = steps_per_epoch * epochs if a.max_steps is None else min(a.max_steps, steps_per_epoch * epochs)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad],
                             a.lr * STAGES[stage]["lr_scale"], a.weight_decay, self.device)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, a.warmup))
        return {"stage": stage, "data": data, "val": val, "p_tok": p_tok,
                "q_tok": TokenStore(tok, model.prompted(data.query_texts, "query"), model.config.query_max_len),
                "vq_tok": TokenStore(tok, model.prompted(val.query_texts, "query"), model.config.query_max_len),
                "judged": self._judged_by_qidx(data), "val_judged": self._judged_by_qidx(val),
                "logq": self._logq(data) if a.logq else None, "epochs": epochs, "plan1": plan1, "total": total,
                "opt": opt, "sched": sched}

    def _topic_clusters(self, model: TwoTowerModel, data: StageData, stage: int, k: int) -> np.ndarray:
        """--topic-batches: the stage's training queries in k clusters of the stage's starting model's
        query embeddings (the same model, so the same clusters, when a stage is resumed); k is about
        one cluster per batch of an epoch, at most TOPIC_MAX_CLUSTERS (k-means cost grows with
        clusters x queries; at ESCI's size a cluster then fills a few dozen batches, still of one
        topic). Rank 0 clusters; other processes receive its clusters."""
        t0 = time.perf_counter()
        topics = np.zeros(len(data.query_texts), dtype=np.int64)
        if is_main_process():
            topics = topic_clusters(model.encode_queries(data.query_texts), k, self.args.seed + stage)
        if self.world > 1:
            t = torch.as_tensor(topics, device=self.device)
            dist.broadcast(t, 0)
            topics = t.cpu().numpy()
        log.info("stage %d: --topic-batches: %s queries in %d clusters (%.1f s)", stage,
                 f"{len(data.query_texts):,}", len(np.unique(topics)), time.perf_counter() - t0)
        return topics

    def _epoch_queries(self, st: dict, model: TwoTowerModel, epoch: int) -> TokenStore:
        """The query tokens an epoch trains on: the clean queries, or with --query-typos a seeded
        fraction of them with one typing error each (augment.py), the same again on a resumed run."""
        if not self.args.query_typos:
            return st["q_tok"]
        rng = np.random.default_rng([self.args.seed, epoch, 17])
        texts = augment_queries(st["data"].query_texts, self.args.query_typos, rng)
        return TokenStore(model.tokenizer, model.prompted(texts, "query"), model.config.query_max_len)

    def _plan(self, data: StageData, p_tok: TokenStore, epoch: int) -> list[Batch]:
        a = self.args
        return plan_epoch(data, p_tok.lengths, self.batch_size, a.negatives, a.seed, epoch, a.bucket_batches,
                          a.epoch_pairs, a.distinct_queries, self._topics)

    def _train_epoch(self, model, st: dict, batches: list[Batch], start: int, pos: dict, epoch: int, t0: float,
                     done: list) -> None:
        """Batches start.. of one epoch: forward, backward, an optimizer step every --grad-accum batches."""
        a = self.args
        model.train()
        bar = progress(total=len(batches), initial=start, desc=f"stage {st['stage']} epoch {epoch}", unit="batch",
                       disable=not is_main_process(), mininterval=5)
        for bi in range(start, len(batches)):
            if pos["step"] >= st["total"]:
                break
            loss, stats = self._forward(model, batches[bi], st["q_tok"], st["p_tok"], st["judged"], st["logq"],
                                        st["data"].query_texts if self.distill else None)
            (loss / a.grad_accum).backward()
            done[0] += len(batches[bi].q_rows)
            bar.update(1)
            if (bi + 1) % a.grad_accum and bi + 1 < len(batches):
                continue
            gnorm = self._optimizer_step(model, st["opt"], st["sched"])
            pos.update(epoch=epoch, batch=bi + 1, step=pos["step"] + 1)
            elapsed = time.perf_counter() - t0
            self._log_step({"stage": st["stage"], "epoch": epoch, "step": pos["step"], "pairs": done[0],
                            "loss": round(loss.item(), 5),
                            "lr": st["sched"].get_last_lr()[0], "grad_norm": round(gnorm, 4),
                            "pairs_per_s": round(done[0] / elapsed, 2), "elapsed_s": round(elapsed, 3), **stats})
            bar.set_postfix(loss=f"{loss.item():.4f}", pairs_s=f"{done[0] / elapsed:.1f}")
            if a.save_steps and pos["step"] % a.save_steps == 0:
                self._save_state(model, st, pos, step_copy=True)
        bar.close()

    def _end_epoch(self, model, st: dict, pos: dict, epoch: int, complete: bool) -> bool:
        """Validate, save epoch_N.pt (and best_model.pt when the selection rule says so) and last.pt.
        Returns whether validation improved by the --select score the user asked for (--patience
        counts these), which differs from the rule used when --min-val-queries overrode it."""
        stage = st["stage"]
        vm = self.validate(model, st["val"], st["vq_tok"], st["p_tok"], st["val_judged"])
        vm.update(stage=stage, epoch=epoch, step=pos["step"], complete_epoch=complete)
        self.history.append(vm)
        log.info("stage %d epoch %d: val loss %.4f  recall@10 %.4f  mrr %.4f", stage, epoch, vm["val_loss"],
                 vm["recall@10"], vm["mrr"])
        improved = better(vm, self.best, self.select)  # same decision on every rank
        meta = {"progress": {**pos, "epoch": epoch}, "val": vm}
        if is_main_process():
            model.save(self.ckdir / f"epoch_{epoch}.pt", extra=meta)
            if improved:
                model.save(best_checkpoint(self.ckdir), extra=meta)
        if improved:
            self.best = self._best_record(vm)
        pos.update(epoch=epoch + 1, batch=0)
        self._save_state(model, st, pos)
        return improved if self.select_why is None else self._improves_asked(vm)

    def _improves_asked(self, vm: dict) -> bool:
        """Does `vm` (the newest of self.history) beat every earlier epoch by the asked --select?"""
        asked = self.args.select
        prev = best_of(self.history[:-1], asked)
        return prev is None or better(vm, {"score": SELECT[asked](prev), "val_loss": prev["val_loss"]}, asked)

    # -- steps ---------------------------------------------------------------------------------------
    def _lexical(self, b: Batch, query_texts: list[str]) -> torch.Tensor:
        """(b, b + b*k) BM25 score of every batch candidate (in-batch positives, then the explicit
        negatives; 0 for padding) for each row's query: the --lexical-distill teacher's input."""
        if self._bm25 is None:  # the workflow's index (the hybrid's BM25) when built, else one in memory
            from lexical import Bm25Index
            from paths import bm25_index_dir
            built = bm25_index_dir(self.args.data_dir)
            have = (built / "metadata.json").is_file()
            self._bm25 = (Bm25Index.load(built, self.products) if have
                          else Bm25Index.build(self.products, show_progress=False))
            log.info("--lexical-distill: BM25 over %s products (%s)", f"{len(self.products):,}",
                     built if have else "built in memory")
        cand = np.concatenate([b.p_rows, b.neg_rows.reshape(-1)])  # (b + b*k,), -1 = padding
        return torch.from_numpy(self._bm25.candidate_scores(query_texts, b.q_rows, cand))

    def _forward(self, model, b: Batch, q_tok, p_tok, judged, logq,
                 query_texts: list[str] | None = None) -> tuple[torch.Tensor, dict]:
        """Embed the batch and call the loss once, whichever it is (plus the --lexical-distill term
        when the query texts are given)."""
        neg_flat = b.neg_rows.reshape(-1)
        valid = neg_flat >= 0
        with autocast(self.device, self.precision):
            sides = [(q_tok, b.q_rows, "query"), (p_tok, b.p_rows, "product")]
            if valid.any():
                sides.append((p_tok, neg_flat[valid], "product"))
            q, p, *rest = embed_global(model, sides, self.length_groups, self.device, self.rank,
                                       self.world)  # (b, d), (b, d) [, (m, d)]
            n = None
            if rest:
                n_valid = rest[0]
                n = torch.zeros(len(neg_flat), q.shape[1], device=q.device, dtype=n_valid.dtype)
                n[torch.from_numpy(np.flatnonzero(valid)).to(q.device)] = n_valid
                n = n.reshape(len(b.q_rows), -1, q.shape[1])  # (b, k, d)
        kw = loss_inputs(b, q.device, judged, logq, self.args.graded_mask)
        if n is None:
            if getattr(self.loss_fn, "needs_negatives", False):
                raise UserError(f"--loss {self.args.loss} needs explicit negatives, but a batch has none; "
                                f"check the negatives in training_pairs.parquet")
            kw["negative_valid"] = None
        loss = self.loss_fn(q, p, n, **kw)
        extra = {}
        if query_texts is not None:
            d = self.distill(q, p, n, self._lexical(b, query_texts), kw["weights"], kw["mask"], kw["negative_valid"])
            loss = loss + d
            extra["distill"] = round(float(d.detach()), 5)
        stats = {**extra, "pos_cos": round(float((q * p).detach().sum(-1).mean()), 4),
                 "masked": int(kw["mask"][:, :len(b.q_rows)].sum()) - int(kw["mask"].diagonal().sum())}
        if n is not None:
            stats["neg_cos"] = round(float(torch.einsum("bd,bkd->bk", q.detach(), n.detach())[
                kw["negative_valid"]].mean()), 4)
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
        model._fingerprint = None  # the weights changed
        return gnorm

    @torch.no_grad()
    def validate(self, model, val: StageData, vq_tok, p_tok, judged) -> dict:
        """Validation loss on fixed batches + Recall@10/MRR of val queries on a bounded corpus."""
        model.eval()
        a = self.args
        # the same loss at every stage (in-batch InfoNCE without the stage's explicit negatives), so
        # the val losses of stage 1 and of stages 2-3, which add a mined negative, compare
        n_neg = 0 if a.loss == "infonce" else a.negatives
        batches = plan_epoch(val, p_tok.lengths, self.batch_size, n_neg, a.seed, 0)[:a.val_batches]
        losses = [float(self._forward(model, b, vq_tok, p_tok, judged, None)[0]) for b in batches]
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

    # -- state and logs --------------------------------------------------------------------------
    def progress_record(self, pos: dict) -> dict:
        return {**pos, "best": self.best, "history": self.history, "stages": self.results}

    def _save_state(self, model, st: dict, pos: dict, step_copy: bool = False) -> None:
        if is_main_process():
            save_train_state(self.ckdir, model, st["opt"], st["sched"], self.progress_record(pos),
                             args_to_config(self.args), step_copy=step_copy, keep_steps=self.args.keep_checkpoints)

    def _maybe_resume(self, stage, model, opt, sched, pos) -> bool:
        a = self.args
        if not a.resume:
            return False
        path = last_checkpoint(self.ckdir) if a.resume == "auto" else Path(a.resume)
        if not path.is_file():
            if a.resume != "auto":
                raise UserError(f"--resume: checkpoint not found: {path}")
            log.info("--resume: no %s yet, starting stage %d from the beginning", path, stage)
            return False
        state, prog = load_train_state(path)
        if prog.get("stage") != stage or prog.get("stage_done") == stage:
            if a.resume != "auto":  # main() answers a finished stage; this is another stage's state
                raise UserError(f"--resume {path} holds the state of stage {prog.get('stage')}, not stage {stage}; "
                                f"resume with --stage {prog.get('stage')} or drop --resume")
            return False
        saved = TwoTowerModel.config_class.from_dict(state["config"])  # no second model is built
        if saved.embedding_dim != model.config.embedding_dim or saved.base_model != model.config.base_model:
            raise UserError(f"{path} holds a {saved.embedding_dim}-dimension model on {saved.base_model!r}, but "
                            f"this stage builds a {model.config.embedding_dim}-dimension model on "
                            f"{model.config.base_model!r}; resume with the same model options or drop --resume")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"{path}: its weights do not fit this stage's model ({str(e).splitlines()[0][:160]})") \
                from None
        model._fingerprint = None  # the weights changed
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        pos.update({k: prog[k] for k in ("epoch", "batch", "step")})
        if is_main_process():  # the step lines logged after this state are trained again
            trim_step_log(self.ckdir / "train_log.jsonl", stage, pos["step"])
        self.best = prog.get("best", self.best)
        self.history = list(prog.get("history", []))
        self.results = list(prog.get("stages", []))
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
                from torch.utils.tensorboard import SummaryWriter  # present: checked by require_tensorboard
                self.tb = SummaryWriter(str(self.args.tensorboard))
        self.log_file.write(json.dumps(rec) + "\n")
        self.log_file.flush()
        if self.tb:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("stage", "epoch", "step"):
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])
