"""Benchmark: `TwoTowerModel.encode_products` versus plain `SentenceTransformer.encode` (fp32
defaults) on the same product texts in one run: products/s (3 rounds, round-robin, median), mean/min
cosine between the two, and the top-10 overlap of a query set retrieved against both.

Texts: the first --n products of the `small` sample catalog (made on the fly), queries: its queries.

Example (~3 min on 2 cores):
    python bench/bench_encode.py --n 2000 --out bench/out/encode.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import ROOT, write_result  # noqa: E402  (puts the project on sys.path)

from sample_catalog import make_sample_catalog  # noqa: E402
from two_tower_model import TwoTowerModel  # noqa: E402
from utils import (SAMPLE_SEED, add_alias, add_version_arg, EXAMPLES_FILE, PRODUCTS_FILE, bf16_supported, build_product_text,  # noqa: E402
                   resolve_model_path)


def load_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    with tempfile.TemporaryDirectory() as d:
        make_sample_catalog(Path(d), "small", seed=seed, n_products=max(n, 4000))
        pr = pd.read_parquet(Path(d) / PRODUCTS_FILE)
        ex = pd.read_parquet(Path(d) / EXAMPLES_FILE)
    texts = [build_product_text(r.product_title, r.product_brand, r.product_color, r.product_bullet_point)
             for r in pr.head(n).itertuples()]
    return texts, ex["query"].drop_duplicates().tolist()


def top10_overlap(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ta = np.argsort(-(q @ a.T), 1)[:, :10]
    tb = np.argsort(-(q @ b.T), 1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ta, tb)]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--n", type=int, default=2000, help="product texts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sample-seed", type=int, default=SAMPLE_SEED, help="which sample catalog the texts come from")
    add_alias(p, "--seed", "--sample-seed")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "encode.json")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    from sentence_transformers import SentenceTransformer
    texts, queries = load_texts(args.n, args.sample_seed)
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    st = SentenceTransformer(path, device="cpu")
    ours = TwoTowerModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    tok_lens = [len(x) for x in st.tokenizer(texts)["input_ids"]]
    runs = {
        "st_fp32": lambda: st.encode(texts, batch_size=32, normalize_embeddings=True),
        "encode_products": lambda: ours.encode_products(texts),
    }
    st.encode(texts[:64]); ours.encode_products(texts[:64])
    rates: dict[str, list[float]] = {k: [] for k in runs}
    embs = {}
    for _ in range(args.rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            embs[k] = f()
            rates[k].append(len(texts) / (time.perf_counter() - t))
    a, b = embs["encode_products"], embs["st_fp32"]
    cos = (a * b).sum(1)
    qe = st.encode(queries, normalize_embeddings=True)
    res = {
        "n_products": len(texts), "mean_tokens": round(float(np.mean(tok_lens)), 1),
        "threads": torch.get_num_threads(), "bf16_native": bf16_supported(torch.device("cpu")),
        "encode_dtype": "bf16" if bf16_supported(torch.device("cpu")) else "fp32",
        "products_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "products_per_s_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "speedup_vs_st_fp32": round(statistics.median(rates["encode_products"]) / statistics.median(rates["st_fp32"]), 2),
        "cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
        "top10_overlap": round(top10_overlap(qe, a, b), 4), "n_queries": len(queries),
    }
    return write_result(args.out, res)


if __name__ == "__main__":
    main(parse_args())
