"""Benchmark: BM25 analyzer and parameter variants on prepared data sets (test queries over the whole
catalog, relevant = E, ESCI gains), so the defaults of lexical.py are a measured choice.

Variants: the suite's default (lexical.Bm25Index: \\w+ tokens, English stop words, Snowball stems,
k1 1.2, b 0.75), each option changed alone (no stemmer, no stop words, k1 0.9 / 1.5, b 0.5 / 0.9), and
bm25s' own README defaults (bm25s.tokenize: tokens of 2+ characters, stop words, no stemmer,
k1 1.5), which drop one-character tokens such as the digits of "3/4" or "2 x 4".

Reads: DATA_DIR/products_clean.parquet and ground_truth.parquet of each --data-dir (prepared by
prepare_training_data.py). Writes: --out (JSON) and prints a markdown table.

Example (seconds per data set):
    python prepare_training_data.py --raw-dir ../shared/real_homedepot --resplit-queries 0.3 --data-dir /tmp/hd
    python bench/bench_bm25.py --data-dir /tmp/hd --out bench/out/bm25.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import ROOT, write_result  # noqa: E402  (puts the project on sys.path)

from lexical import Bm25Index  # noqa: E402
from metrics import evaluate_run  # noqa: E402
from cli import add_version_arg, run_cli  # noqa: E402
from fileio import load_catalog, load_prepared  # noqa: E402
from paths import ESCI_GAINS  # noqa: E402

VARIANTS = {"default (k1 1.2, b 0.75, stems, stop words)": {},
            "no stemmer": {"stemmer": "none"}, "no stop words": {"stopwords": "none"},
            "k1 0.9": {"k1": 0.9}, "k1 1.5": {"k1": 1.5}, "b 0.5": {"b": 0.5}, "b 0.9": {"b": 0.9}}


def bm25s_readme_run(products: pd.DataFrame, queries: pd.DataFrame, k: int = 200) -> dict:
    """bm25s as its README shows it: bm25s.tokenize (2+ character tokens, stop words), k1 1.5."""
    import bm25s
    r = bm25s.BM25()
    r.index(bm25s.tokenize(products["product_text"].tolist(), stopwords="en", show_progress=False),
            show_progress=False)
    toks = bm25s.tokenize(queries["query"].tolist(), stopwords="en", return_ids=False, show_progress=False)
    ids, run = products["product_id"].to_numpy(), {}
    for q, t in zip(queries["query_id"], toks):
        t = [x for x in t if x in r.vocab_dict and x]
        if not t:
            run[q] = []
            continue
        s = r.get_scores(t)
        top = np.argsort(-s)[:k]
        run[q] = ids[top[s[top] > 0]].tolist()
    return run


def main(args) -> dict:
    res = {}
    for d in args.data_dir:
        products = load_catalog(d)
        gt = load_prepared(d, "ground_truth")
        test = gt[gt["split"] == "test"]
        qrels = {q: dict(zip(g["product_id"], g["esci_label"])) for q, g in test.groupby("query_id")}
        queries = test.drop_duplicates("query_id")[["query_id", "query"]]
        rows = {}
        for name, kw in VARIANTS.items():
            t = time.perf_counter()
            ix = Bm25Index.build(products, show_progress=False, **kw)
            hits = ix.search(queries["query"].tolist(), 200)
            run = {q: ix.ids[r].tolist() for q, (r, _) in zip(queries["query_id"], hits)}
            m, _ = evaluate_run(run, qrels, ("E",), ESCI_GAINS, (10,))
            rows[name] = {"recall@10": round(m["recall@10"], 4), "ndcg@10": round(m["ndcg@10"], 4),
                          "seconds": round(time.perf_counter() - t, 1)}
        m, _ = evaluate_run(bm25s_readme_run(products, queries), qrels, ("E",), ESCI_GAINS, (10,))
        rows["bm25s README defaults (2+ char tokens, no stems, k1 1.5)"] = {"recall@10": round(m["recall@10"], 4),
                                                                           "ndcg@10": round(m["ndcg@10"], 4)}
        res[str(d)] = {"catalog": len(products), "test_queries": m["queries"], "variants": rows}
    lines = ["| variant | " + " | ".join(f"{Path(d).name} R@10 / NDCG@10" for d in res) + " |",
             "| --- |" + " --- |" * len(res)]
    for name in next(iter(res.values()))["variants"]:
        lines.append(f"| {name} | " + " | ".join(f"{r['variants'][name]['recall@10']:.4f} / "
                                                f"{r['variants'][name]['ndcg@10']:.4f}" for r in res.values()) + " |")
    print("\n".join(lines))
    return write_result(args.out, {"table_markdown": "\n".join(lines), **res})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--data-dir", type=Path, action="append", required=True, help="a prepared data dir (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "bm25.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
