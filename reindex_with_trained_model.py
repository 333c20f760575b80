"""Phase 6: embed the catalog with a model's product tower and build FAISS indices (or, with --bm25,
the catalog's BM25 index).

Reads: --checkpoint (default checkpoints/best_model.pt) or, with --baseline, the pretrained base
model; data/products_clean.parquet; data/val_pairs queries (for the HNSW recall report).
Writes (--out-dir, refused when it holds indices unless --overwrite; default data/indices, or data/indices_baseline with --baseline):
  faiss_index_flat.bin   exact inner product (cosine on normalised embeddings)
  faiss_index_hnsw.bin   HNSW (--hnsw-m, --ef-construction, --ef-search)
  faiss_index_custom.bin with --index-factory (e.g. "IVF4096,PQ48" for very large catalogs)
  product_ids.parquet    index row -> product_id
  metadata.json          model (source, fingerprint, base model, dimension), catalog checksum and
                         size, index parameters, HNSW recall@10/@100 vs Flat, queries/s, build time
With --bm25 no model is loaded: the catalog's product texts are indexed by BM25 (lexical.py, bm25s;
--bm25-k1, --bm25-b, --bm25-stemmer, --bm25-stopwords) into --out-dir (default data/indices_bm25):
bm25s' own array files + product_ids.parquet + metadata.json (parameters, catalog fingerprint, the
sha256 of every file), written as one directory swapped in atomically.
The catalog embeddings come from (or go to) the model's one cache,
data/embeddings_cache/<model fingerprint>/, shared with mining: a checkpoint that was mined with
is not encoded again.

Example (CPU, tiny sample, ~30 s; the BM25 index in seconds):
    python reindex_with_trained_model.py --baseline --data-dir /tmp/d
    python reindex_with_trained_model.py --bm25 --data-dir /tmp/d
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np

import lexical
from embeddings import build_index, catalog_embeddings, save_index_meta, search, write_index
from two_tower_model import add_model_source_args, load_model_from_args
from cli import (NONNEG_INT, POSITIVE_INT, add_alias, add_common_args, args_to_config, float_range, int_range,
                 refuse_overwrite, run_cli)
from fileio import load_catalog, read_parquet, require_writable
from paths import DEFAULT_CHECKPOINT_DIR, best_checkpoint, bm25_index_dir, index_dir as default_index_dir
from utils import Timer, UserError, init_distributed, is_main_process, log


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(p, best_checkpoint(DEFAULT_CHECKPOINT_DIR))
    p.add_argument("--out-dir", type=Path, default=None,
                   help="output directory of the indices (default: DATA_DIR/indices, or DATA_DIR/indices_baseline "
                        "with --baseline); later phases read it as --index-dir")
    add_alias(p, "--index-dir", "--out-dir")
    p.add_argument("--hnsw-m", type=int_range(2), default=32)
    p.add_argument("--ef-construction", type=POSITIVE_INT, default=200)
    p.add_argument("--ef-search", type=POSITIVE_INT, default=128)
    p.add_argument("--no-hnsw", action="store_true", help="build the Flat index only")
    p.add_argument("--index-factory", default=None, help="also build a faiss index_factory index")
    p.add_argument("--report-queries", type=NONNEG_INT, default=2000, help="queries for the HNSW-vs-Flat report")
    g = p.add_argument_group("BM25 (--bm25)")
    g.add_argument("--bm25", action="store_true",
                   help="build the catalog's BM25 index instead (no model; default --out-dir DATA_DIR/indices_bm25)")
    d = lexical.BM25_DEFAULTS
    g.add_argument("--bm25-k1", type=float_range(0.0), default=d["k1"], help=f"term-frequency saturation (default {d['k1']}, "
                   "as Elasticsearch)")
    g.add_argument("--bm25-b", type=float_range(0.0, 1.0), default=d["b"], help=f"length normalisation (default {d['b']})")
    g.add_argument("--bm25-stemmer", default=d["stemmer"], help="Snowball stemmer language, or none (default english)")
    g.add_argument("--bm25-stopwords", choices=["en", "none"], default=d["stopwords"], help="stop words removed")
    add_common_args(p, overwrite="the indices in --out-dir")
    return p.parse_args(argv)


def recall_vs_flat(flat, other, queries: np.ndarray, ks=(10, 100)) -> dict:
    """Recall@k of an approximate index against exact Flat results, and both indices' queries/s."""
    out = {}
    kmax = min(max(ks), flat.ntotal)
    t = time.perf_counter()
    _, exact = search(flat, queries, kmax)
    out["flat_qps"] = round(len(queries) / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    _, approx = search(other, queries, kmax)
    out["qps"] = round(len(queries) / (time.perf_counter() - t), 1)
    for k in ks:
        k2 = min(k, kmax)
        out[f"recall@{k}"] = round(float(np.mean([len(set(a[:k2]) & set(b[:k2])) / k2
                                                 for a, b in zip(exact, approx)])), 4)
    return out


def build_bm25(args: argparse.Namespace) -> dict:
    """--bm25: the catalog's BM25 index (no model, no encode)."""
    if args.baseline:
        raise UserError("--bm25 builds the lexical index and loads no model: drop --baseline")
    out = args.out_dir or bm25_index_dir(args.data_dir)
    refuse_overwrite(args, out / "metadata.json", option="--out-dir")
    require_writable(out.parent, "--out-dir")
    products = load_catalog(args.data_dir)
    return lexical.build_and_save(products, out, args.bm25_k1, args.bm25_b, args.bm25_stemmer, args.bm25_stopwords,
                                  extra={"config": args_to_config(args)})


def main(args: argparse.Namespace) -> dict:
    if args.bm25:
        return build_bm25(args)
    init_distributed()
    index_dir = args.out_dir or default_index_dir(args.data_dir, args.baseline)
    if is_main_process():  # before the catalog encode, not after it
        refuse_overwrite(args, index_dir / "faiss_index_flat.bin", index_dir / "metadata.json", option="--out-dir")
        require_writable(index_dir, "--out-dir")
        require_writable(args.data_dir, "--data-dir (embedding cache)")
    model, info = load_model_from_args(args)
    products = load_catalog(args.data_dir)
    with Timer() as t_enc:
        emb, emb_meta = catalog_embeddings(model, products, args.data_dir, batch_size=args.encode_batch_size,
                                    backend=args.backend, keep_caches=args.keep_caches)
    if not is_main_process():
        return {}
    meta = {"model": info, "model_fingerprint": info["fingerprint"],
            "catalog_fingerprint": emb_meta["fingerprint"]["catalog"], "catalog_size": len(products),
            "dim": int(emb.shape[1]), "metric": "inner_product", "hnsw_m": args.hnsw_m,
            "ef_construction": args.ef_construction, "ef_search": args.ef_search,
            "index_factory": args.index_factory, "encode_seconds": round(t_enc.seconds, 1),
            "encode_products_per_s": emb_meta.get("products_per_s"), "encode_backend": emb_meta.get("backend"),
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": args_to_config(args)}
    with Timer() as t:
        flat = build_index(emb, "flat")
        write_index(flat, index_dir / "faiss_index_flat.bin")
    meta["flat_build_seconds"] = round(t.seconds, 2)
    qtexts = _report_queries(args.data_dir, args.report_queries, args.seed)
    qemb = model.encode_queries(qtexts) if qtexts else np.zeros((0, emb.shape[1]), np.float32)
    built = {}
    if not args.no_hnsw:
        with Timer() as t:
            built["hnsw"] = build_index(emb, "hnsw", args.hnsw_m, args.ef_construction, args.ef_search)
            write_index(built["hnsw"], index_dir / "faiss_index_hnsw.bin")
        meta["hnsw_build_seconds"] = round(t.seconds, 2)
    if args.index_factory:
        with Timer() as t:
            built["custom"] = build_index(emb, "factory", factory=args.index_factory)
            write_index(built["custom"], index_dir / "faiss_index_custom.bin")
        meta["custom_build_seconds"] = round(t.seconds, 2)
    for name, idx in built.items():
        if len(qemb):
            meta[f"{name}_vs_flat"] = recall_vs_flat(flat, idx, qemb)
            log.info("%s vs flat on %d queries: %s", name, len(qemb), meta[f"{name}_vs_flat"])
    save_index_meta(index_dir, products, meta)
    log.info("indexed %s products (dim %d) with %s in %s", f"{len(products):,}", emb.shape[1], info["source"],
             index_dir)
    return meta


def _report_queries(data_dir: Path, n: int, seed: int) -> list[str]:
    """Validation queries (else test, else any) for the HNSW-vs-Flat report."""
    gt_path = data_dir / "ground_truth.parquet"
    if not gt_path.is_file() or n <= 0:
        return []
    gt = read_parquet(gt_path, ["query", "split"], "re-run prepare_training_data.py").drop_duplicates("query")
    for split in ("val", "test", "train"):
        q = gt.loc[gt["split"] == split, "query"]
        if len(q):
            return q.sample(min(n, len(q)), random_state=seed).tolist()
    return []


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
