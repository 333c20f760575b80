"""The sentence-transformers recipes the suite is compared with (bench_quality.py --peers ...).

Each trains all-MiniLM-L6-v2 with `SentenceTransformerTrainer` on one row per E/S training positive
(the project's product text, max length 128), lr 2e-5, warm-up 10%, bf16 where the CPU runs it
natively, and saves a sentence-transformers directory:

  plain   MultipleNegativesRankingLoss, batch 32, NO_DUPLICATES sampler: the script a user writes
          from the sentence-transformers docs.
  mined   the same loss on (anchor, positive, negative_1..n) n-tuples from sentence-transformers'
          own `mine_hard_negatives` over the whole catalog with the pretrained model (the docs'
          recipe: ranks 10-50, relative margin 0.05, random sampling among them), batch 32.
  cached  CachedMultipleNegativesRankingLoss (GradCache) at batch 256 (mini-batches of 32): a
          large in-batch softmax at the memory of a small one.

`train(recipe, pairs, products, out, epochs, seed, ...)` -> a dict of what was trained and how long
it took (mining included).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd

RECIPES = ("plain", "mined", "cached")
LABELS = {"plain": "peer: ST MNRL", "mined": "peer: ST MNRL + mine_hard_negatives",
          "cached": "peer: ST CachedMNRL, batch 256"}
MINED = {"range_min": 10, "range_max": 50, "relative_margin": 0.05, "sampling_strategy": "random"}


def settings(recipe: str, batch_size: int | None = None, mined_negatives: int = 3,
             mined_margin: float = MINED["relative_margin"]) -> dict:
    """What a trained peer's info must match to be reused: its batch size, and the miner's settings."""
    out = {"batch_size": batch_size or (256 if recipe == "cached" else 32)}
    if recipe == "mined":
        out["mined"] = {"num_negatives": mined_negatives, "relative_margin": mined_margin}
    return out


def reusable(info: dict, want: dict) -> bool:
    return info.get("batch_size") == want["batch_size"] and all(
        info.get("mined", {}).get(k) == v for k, v in want.get("mined", {}).items())


def positives(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per E/S training positive (the peers' data)."""
    return pairs[(pairs["label"] > 0) & pairs["esci_label"].isin(["E", "S"])][["query", "product_text"]]


def train(recipe: str, pairs: pd.DataFrame, products: pd.DataFrame, base_model: str, out: Path, epochs: int,
          seed: int, max_pairs: int | None = None, batch_size: int | None = None, mined_negatives: int = 3,
          mined_margin: float = MINED["relative_margin"]) -> dict:
    """Train one recipe and save it to `out`; returns its settings and wall times."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    from utils import bf16_supported, resolve_model_path
    if recipe not in RECIPES:
        raise ValueError(f"unknown peer recipe {recipe!r} (one of {', '.join(RECIPES)})")
    pos = positives(pairs)
    ds = Dataset.from_dict({"anchor": pos["query"].tolist(), "positive": pos["product_text"].tolist()})
    model = SentenceTransformer(resolve_model_path(base_model), device="cpu")
    model.max_seq_length = 128  # the project's product max length (queries are far shorter)
    info = {"recipe": recipe, "label": LABELS[recipe], "pairs": len(ds), "epochs": epochs}
    mine_s = 0.0
    if recipe == "mined":
        from sentence_transformers.util import mine_hard_negatives
        t = time.perf_counter()
        miner = dict(MINED, relative_margin=mined_margin)
        ds = mine_hard_negatives(ds, model, corpus=products["product_text"].tolist(), num_negatives=mined_negatives,
                                 output_format="n-tuple", batch_size=128, verbose=False, **miner)
        mine_s = time.perf_counter() - t
        info.update(mined=dict(miner, num_negatives=mined_negatives, rows_with_negatives=len(ds)))
    bs = settings(recipe, batch_size)["batch_size"]
    if len(ds) < bs:
        raise ValueError(f"peer recipe {recipe!r}: {len(ds)} training rows, fewer than one batch of {bs}"
                         + (" (mine_hard_negatives found too few negatives: lower --peer-mined-margin)"
                            if recipe == "mined" else ""))
    loss = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=32) if recipe == "cached"
            else MultipleNegativesRankingLoss(model))
    max_steps = -1
    if max_pairs:
        max_steps = min(epochs * math.ceil(len(ds) / bs), math.ceil(max_pairs / bs))
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out.parent / f"{out.name}_trainer"), num_train_epochs=epochs, max_steps=max_steps,
        per_device_train_batch_size=bs, learning_rate=2e-5, warmup_ratio=0.1,
        batch_sampler=BatchSamplers.NO_DUPLICATES, bf16=bf16_supported(torch.device("cpu")),
        save_strategy="no", logging_steps=50, report_to=[], seed=seed, use_cpu=True)
    t = time.perf_counter()
    SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds, loss=loss).train()
    train_s = time.perf_counter() - t
    model.save(str(out))
    info.update(batch_size=bs, max_steps=max_steps, bf16=targs.bf16, mine_seconds=round(mine_s, 1),
                train_seconds=round(train_s, 1), seconds=round(mine_s + train_s, 1))
    return info
