"""Catalog embeddings and FAISS indices, shared by reindexing, mining, evaluation and the demo.

`catalog_embeddings(model, products, data_dir)` is the one cache of a model's catalog encode:
data/embeddings_cache/<model fingerprint>[-<backend>]/embeddings.npy (backends.py), so mining with a checkpoint and
reindexing the same checkpoint encode the catalog once. `encode_catalog` streams product
embeddings in chunks into a memory-mapped float32 `.npy` with a sidecar JSON fingerprint (model
fingerprint, catalog checksum, dimension, count):
  - an unchanged catalog + model is never encoded twice (the cached file is returned after a
    check of its shape and of finite values);
  - an interrupted encode resumes at the last completed chunk;
  - under torchrun each process encodes its own slice and rank 0 assembles the result;
  - after each use, `prune_caches` removes all but the few most recently used entries
    (--keep-caches, default 4: one workflow's encodes), so retraining does not fill the disk.

`build_index` / `write_index` + `save_index_meta` / `load_index` build, write and check FAISS indices with a metadata.json
that names the model and catalog they belong to; a mismatch is refused.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

import backends
from cli import progress
from fileio import atomic_path, read_json, read_parquet, write_json, write_parquet
from paths import embedding_cache_dir
from utils import UserError, barrier, init_distributed, is_main_process, log

CHUNK = 8192
KEEP_CACHES = 4  # a workflow's four catalog encodes: the baseline, the stage-1 and stage-2 models, the trained one


def catalog_fingerprint(products: pd.DataFrame) -> str:
    """sha256 of the catalog's ids and texts, in order."""
    h = hashlib.sha256()
    for s in range(0, len(products), 100_000):
        c = products.iloc[s:s + 100_000]
        h.update("\x1f".join(c["product_id"].astype(str)).encode())
        h.update("\x1e".join(c["product_text"].astype(str)).encode())
    return f"{h.hexdigest()[:16]}-{len(products)}"


def _open(path: Path, n: int, d: int, mode: str) -> np.memmap:
    return np.lib.format.open_memmap(path, mode=mode, dtype=np.float32, shape=(n, d))


def catalog_embeddings(model, products: pd.DataFrame, data_dir: Path, batch_size: int = 64,
                       show_progress: bool = True, backend: str = "torch",
                       keep_caches: int = KEEP_CACHES) -> tuple[np.ndarray, dict]:
    """The model's embeddings of the catalog from its one cache under data_dir (encoded if needed),
    by `backend` (backends.py: torch, openvino or auto); each backend has its own cache entry. Then
    all but the `keep_caches` most recently used cache entries are removed (prune_caches; 0 = none)."""
    concrete = backends.resolve_backend(backend, model.device)
    key = backends.backend_key(concrete, model.device)
    cache = embedding_cache_dir(data_dir, model.fingerprint() + (f"-{key}" if key else ""))
    out = encode_catalog(model, products, cache, batch_size, show_progress,
                         make_encoder=lambda: backends.product_encoder(model, concrete), backend=key or "torch")
    if is_main_process():
        prune_caches(cache.parent, keep_caches, cache)
    return out


def _last_use(d: Path) -> float:
    """When a cache entry was last written or hit (encode_catalog touches embeddings.json on a hit)."""
    return max([f.stat().st_mtime for f in d.iterdir()] + [d.stat().st_mtime])


def prune_caches(root: Path, keep: int, current: Path) -> list[Path]:
    """Remove all but the `keep` most recently used entries of the catalog-embedding cache `root`
    (data/embeddings_cache/); `current`, the entry just used, always stays; keep 0 removes nothing.
    An entry is products x dim x 4 bytes (84 MB for Home Depot's 54,667 titles, 2.8 GB for 1.8M
    products), and every trained model adds one, so a data dir trained in many times would fill the
    disk. Returns the removed entries."""
    root, current = Path(root), Path(current)
    if keep <= 0 or not root.is_dir():
        return []
    others = sorted((d for d in root.iterdir() if d.is_dir() and d.name != current.name), key=_last_use, reverse=True)
    removed = others[keep - 1:]  # keep >= 1 here; the current entry is one of them
    for d in removed:
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        shutil.rmtree(d, ignore_errors=True)
        log.info("removed the catalog-embedding cache %s (%.0f MB, least recently used; --keep-caches %d)",
                 d, size / 2 ** 20, keep)
    return removed


def _cache_ok(final: Path, fp: dict) -> bool:
    """A cached embeddings.npy has the recorded shape and only finite values (checked in chunks)."""
    try:
        emb = np.load(final, mmap_mode="r")
    except (ValueError, OSError):
        return False
    if emb.shape != (fp["count"], fp["dim"]) or emb.dtype != np.float32:
        return False
    return all(np.isfinite(emb[s:s + 262_144]).all() for s in range(0, len(emb), 262_144))


def encode_catalog(model, products: pd.DataFrame, cache_dir: Path, batch_size: int = 64,
                   show_progress: bool = True, make_encoder=None, backend: str = "torch") -> tuple[np.ndarray, dict]:
    """Embeddings (n, d) of products["product_text"], cached in cache_dir/embeddings.npy.
    make_encoder() -> f(texts, batch_size) is called only when something must be encoded."""
    rank, world = init_distributed()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fp = {"model": model.fingerprint(), "catalog": catalog_fingerprint(products),
          "dim": model.config.embedding_dim, "count": len(products), "dtype": "float32"}
    final, meta_path = cache_dir / "embeddings.npy", cache_dir / "embeddings.json"
    if final.is_file() and meta_path.is_file() and read_json(meta_path).get("fingerprint") == fp:
        if _cache_ok(final, fp):
            log.info("catalog embeddings up to date in %s (cache hit)", final)
            if rank == 0:
                os.utime(meta_path)  # a use: prune_caches keeps the most recently used entries
            return np.load(final, mmap_mode="r"), read_json(meta_path)
        log.warning("cached %s is damaged (shape or non-finite values); encoding again", final)
    texts = products["product_text"].to_numpy()
    bounds = np.linspace(0, len(products), world + 1).astype(int)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    part = cache_dir / (f"embeddings.part{rank}of{world}.npy" if world > 1 else "embeddings.partial.npy")
    prog_path = part.with_suffix(".json")
    done = 0
    if part.is_file() and prog_path.is_file():
        prog = read_json(prog_path)
        if prog.get("fingerprint") == fp and prog.get("rows") == [lo, hi]:
            done = int(prog["done"])
            log.info("resuming catalog encode at row %d of %d", lo + done, hi)
    mm = _open(part, hi - lo, fp["dim"], "r+" if done else "w+")
    encode = make_encoder() if make_encoder else backends.product_encoder(model, "torch")
    t0 = time.perf_counter()
    bar = progress(total=hi - lo, initial=done, desc="encode catalog", unit="prod", disable=not show_progress or rank,
                   mininterval=2)
    for s in range(done, hi - lo, CHUNK):
        e = min(hi - lo, s + CHUNK)
        mm[s:e] = encode(texts[lo + s:lo + e].tolist(), batch_size)
        mm.flush()
        write_json(prog_path, {"fingerprint": fp, "rows": [lo, hi], "done": e})
        bar.update(e - s)
    bar.close()
    seconds = time.perf_counter() - t0
    del mm
    barrier()
    if rank == 0:
        with atomic_path(final) as tmp:
            out = _open(tmp, len(products), fp["dim"], "w+")
            parts = [cache_dir / (f"embeddings.part{r}of{world}.npy" if world > 1 else "embeddings.partial.npy")
                     for r in range(world)]
            for r, pth in enumerate(parts):
                out[bounds[r]:bounds[r + 1]] = np.load(pth, mmap_mode="r")
            out.flush()
            del out
        meta = {"fingerprint": fp, "backend": backend, "encode_seconds": round(seconds, 1), "processes": world,
                "products_per_s": round((hi - lo - done) * world / max(seconds, 1e-9), 1)}
        write_json(meta_path, meta)
        for pth in parts:
            pth.unlink(missing_ok=True)
            pth.with_suffix(".json").unlink(missing_ok=True)
    barrier()
    return np.load(final, mmap_mode="r"), read_json(meta_path)


# ---------------------------------------------------------------------------------------------
# FAISS indices
# ---------------------------------------------------------------------------------------------
def build_index(emb: np.ndarray, kind: str, hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128,
                factory: str | None = None, add_batch: int = 100_000):
    """kind 'flat' (exact inner product), 'hnsw', or 'factory' with a faiss index_factory string."""
    import faiss
    d = emb.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            rng = np.random.default_rng(0)
            sample = emb[np.sort(rng.choice(len(emb), size=min(len(emb), 200_000), replace=False))]
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for s in progress(range(0, len(emb), add_batch), desc=f"index {kind}", unit="batch", disable=len(emb) < 200_000):
        index.add(np.ascontiguousarray(emb[s:s + add_batch], dtype=np.float32))
    return index


def write_index(index, path: Path) -> None:
    import faiss
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def save_index_meta(index_dir: Path, products: pd.DataFrame, meta: dict) -> None:
    write_parquet(index_dir / "product_ids.parquet", products[["product_id"]])
    write_json(index_dir / "metadata.json", meta)


def load_index(index_dir: Path, kind: str = "flat", model=None, products: pd.DataFrame | None = None):
    """(faiss index, product_ids array, metadata), refusing an index built for another model or catalog."""
    import faiss
    index_dir = Path(index_dir)
    meta_path = index_dir / "metadata.json"
    path = index_dir / f"faiss_index_{kind}.bin"
    for p in (meta_path, path, index_dir / "product_ids.parquet"):
        if not p.is_file():
            raise UserError(f"index file not found: {p}; build it with reindex_with_trained_model.py")
    meta = read_json(meta_path)
    if model is not None and meta.get("model_fingerprint") != model.fingerprint():
        raise UserError(f"{index_dir} was built with model {meta.get('model', {}).get('source')} "
                        f"(fingerprint {meta.get('model_fingerprint')}), not the model in use; rebuild it with "
                        f"reindex_with_trained_model.py")
    if products is not None and meta.get("catalog_fingerprint") != catalog_fingerprint(products):
        raise UserError(f"{index_dir} indexes another catalog ({meta.get('catalog_size')} products) than "
                        f"products_clean.parquet ({len(products)}); rebuild it with reindex_with_trained_model.py")
    index = faiss.read_index(str(path))
    if kind == "hnsw" and meta.get("ef_search"):
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", int(meta["ef_search"]))
    ids = read_parquet(index_dir / "product_ids.parquet", ["product_id"],
                       "rebuild the index with reindex_with_trained_model.py")["product_id"].to_numpy()
    if index.ntotal != len(ids):
        raise UserError(f"{path} holds {index.ntotal} vectors but product_ids.parquet {len(ids)}; rebuild the index")
    return index, ids, meta


def search(index, queries: np.ndarray, k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) in query batches: memory stays bounded at any catalog size."""
    k = min(k, index.ntotal)
    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), batch):
        sc, ix = index.search(np.ascontiguousarray(queries[s:s + batch], dtype=np.float32), k)
        scores[s:s + batch], rows[s:s + batch] = sc, ix
    return scores, rows
