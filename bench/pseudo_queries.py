"""Experiment tool: title-span pseudo-queries for unjudged catalog products (a lever of issue 27).

Reads a prepared data dir (prepare_training_data.py's training_pairs.parquet and
products_clean.parquet) and writes a copy of it in which training_pairs.parquet gains N synthetic
stage-1 positives: a product's title cut down to what a shopper might type (the part before
" in "/" with "/" for "/" - ", parentheses dropped, a 2-4 word span, half the time the title's last
words, where the product type usually is; edge stop words trimmed; sometimes the brand in front),
lower-cased, paired with that product as an E positive (augment.py). The idea is domain
adaptation: the judged queries touch about a third of a catalog, the spans teach the towers the
rest of its vocabulary. The trainer makes the same spans itself (train_two_tower.py --pseudo-queries
N); this tool writes them out, for a look at them or for training outside the workflow.

Example (~1 s for the sample; then train stage 1 on OUT with train_two_tower.py --data-dir OUT):
    python bench/pseudo_queries.py --data-dir data --out /tmp/pq_data --n 2000
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from common import ROOT  # noqa: F401,E402  (puts the project on sys.path)

from augment import STOP, pseudo_query_pairs, title_span  # noqa: E402,F401  (STOP, title_span: tests)
from cli import add_version_arg, run_cli  # noqa: E402
from fileio import atomic_dir, load_catalog, load_prepared, write_json, write_parquet  # noqa: E402
from utils import UserError, log  # noqa: E402

FIRST_ID = 10_000_000  # synthetic query ids start here, far above prepare's


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--data-dir", type=Path, required=True, help="a prepared data dir")
    p.add_argument("--out", type=Path, required=True, help="the copy to write (must not exist)")
    p.add_argument("--n", type=int, default=20000, help="catalog products to make a pseudo-query for")
    p.add_argument("--weight", type=float, default=1.0, help="loss weight of a pseudo positive")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def pseudo_pairs(products: pd.DataFrame, like: pd.DataFrame, n: int, weight: float, seed: int) -> pd.DataFrame:
    """Rows in training_pairs' schema (`like`): one E positive per sampled product with a usable span
    (augment.pseudo_query_pairs, the spans train_two_tower.py --pseudo-queries trains on)."""
    spans = pseudo_query_pairs(products["product_id"], products["product_text"], n, seed)
    text = products.set_index("product_id")["product_text"]
    out = pd.DataFrame({"query_id": FIRST_ID + spans["pick"].to_numpy(), "query": spans["query"],
                        "product_id": spans["product_id"], "product_text": text.reindex(spans["product_id"]).to_numpy(),
                        "label": 1.0, "weight": weight, "esci_label": "E", "neg_type": "positive",
                        "split": "train", "stage": 1}, columns=list(like.columns))
    return out.astype({c: like[c].dtype for c in like.columns})


def main(args: argparse.Namespace) -> dict:
    if args.out.exists():
        raise UserError(f"{args.out}: already exists; remove it or pick another --out")
    src = args.data_dir
    pairs = load_prepared(src, "training_pairs")
    products = load_catalog(src)
    extra = pseudo_pairs(products, pairs, args.n, args.weight, args.seed)
    stats = {"data_dir": str(src), "out": str(args.out), "pseudo_pairs": len(extra), "pairs_before": len(pairs),
             "weight": args.weight, "seed": args.seed, "examples": extra["query"].head(10).tolist()}
    with atomic_dir(args.out) as tmp:  # a failed run leaves no half-made copy behind
        for f in src.iterdir():
            if f.is_file() and f.suffix in (".parquet", ".json"):
                shutil.copy(f, tmp / f.name)
        write_parquet(tmp / "training_pairs.parquet", pd.concat([pairs, extra], ignore_index=True))
        write_json(tmp / "pseudo_queries_stats.json", stats)
    log.info("%s: %d pseudo-query positives added to %d training rows", args.out, len(extra), len(pairs))
    return stats


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
