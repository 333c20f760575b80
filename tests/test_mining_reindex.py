import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import embeddings as E
import hard_negative_mining as hnm
import reindex_with_trained_model as rx
from conftest import ROOT
from two_tower_model import TwoTowerModel
from fileio import load_catalog
from utils import UserError


def _mine(data_dir, enc, out, *extra):
    return hnm.main(hnm.parse_args(["--baseline", "--base-model", str(enc), "--data-dir", str(data_dir),
                                    "--output", str(out), *extra]))


def test_judged_positives_never_mined_and_schema(data_dir, tiny_encoder_dir):
    out = data_dir / "hn.parquet"
    stats = _mine(data_dir, tiny_encoder_dir, out, "--num-negatives", "5", "--margin", "0")
    hn = pd.read_parquet(out)
    gt = pd.read_parquet(data_dir / "ground_truth.parquet")
    pos = set(map(tuple, gt.loc[gt["esci_label"].isin(["E", "S", "C"]), ["query_id", "product_id"]].values))
    assert not (set(map(tuple, hn[["query_id", "product_id"]].values)) & pos)
    assert (hn["neg_type"] == "hard").all() and (hn["label"] == 0).all()
    assert set(hn["esci_label"].dropna()) <= {"I"}
    assert hn.groupby("query_id").size().max() <= 5
    assert (hn.groupby("query_id")["rank"].apply(lambda r: r.is_monotonic_increasing)).all()
    assert stats["dropped"]["judged_positive"] > 0
    assert json.loads((data_dir / "hn_stats.json").read_text())["negatives"] == len(hn)


def test_margin_guard_and_range(data_dir, tiny_encoder_dir):
    loose = _mine(data_dir, tiny_encoder_dir, data_dir / "a.parquet", "--margin", "0")
    strict = _mine(data_dir, tiny_encoder_dir, data_dir / "b.parquet", "--margin", "0.3")
    a, b = pd.read_parquet(data_dir / "a.parquet"), pd.read_parquet(data_dir / "b.parquet")
    assert strict["dropped"]["margin"] > loose["dropped"]["margin"]
    assert (b["score"] <= 0.7 * b["pos_score"] + 1e-6).all()
    assert a["score"].max() > (0.7 * a["pos_score"]).min()  # the guard removed something real
    skip = _mine(data_dir, tiny_encoder_dir, data_dir / "c.parquet", "--skip-top", "5")
    assert (pd.read_parquet(data_dir / "c.parquet")["rank"] > 5).all() and skip["dropped"]["range"] > 0


def test_near_duplicates_of_positives_are_not_mined(data_dir, tiny_encoder_dir):
    plain = _mine(data_dir, tiny_encoder_dir, data_dir / "a.parquet", "--margin", "0")
    dedup = _mine(data_dir, tiny_encoder_dir, data_dir / "b.parquet", "--margin", "0", "--near-duplicate-cosine", "0.9")
    assert plain["dropped"]["near_duplicate"] == 0 and dedup["dropped"]["near_duplicate"] > 0
    model = TwoTowerModel.from_pretrained(str(tiny_encoder_dir))
    products = load_catalog(data_dir).set_index("product_id")["product_text"]
    gt = pd.read_parquet(data_dir / "ground_truth.parquet")
    pos = gt[gt["esci_label"].isin(["E", "S"])].groupby("query_id")["product_id"].apply(list)
    hn = pd.read_parquet(data_dir / "b.parquet")
    for q, g in list(hn.groupby("query_id"))[:20]:  # no kept negative is that close to a positive
        if q not in pos.index:
            continue
        neg = model.encode_products(products.reindex(g["product_id"]).tolist())
        p = model.encode_products(products.reindex(pos[q]).dropna().tolist())
        assert (neg @ p.T).max() < 0.9 + 2e-2  # bf16/fp32 encode noise
    assert len(hn) < len(pd.read_parquet(data_dir / "a.parquet")) or dedup["dropped"]["beyond_num_negatives"] < \
        plain["dropped"]["beyond_num_negatives"]


def test_mining_from_bm25_and_hybrid_rankings(data_dir, tiny_encoder_dir):
    from lexical import Bm25Index
    with pytest.raises(UserError, match="no BM25 index"):
        _mine(data_dir, tiny_encoder_dir, data_dir / "x.parquet", "--mine-from", "bm25")
    rx.main(rx.parse_args(["--bm25", "--data-dir", str(data_dir)]))
    dense = _mine(data_dir, tiny_encoder_dir, data_dir / "d.parquet", "--margin", "0")
    lex = _mine(data_dir, tiny_encoder_dir, data_dir / "b.parquet", "--margin", "0", "--mine-from", "bm25")
    hyb = _mine(data_dir, tiny_encoder_dir, data_dir / "h.parquet", "--margin", "0", "--mine-from", "hybrid")
    assert (dense["mine_from"], lex["mine_from"], hyb["mine_from"]) == ("dense", "bm25", "hybrid")
    d, b, h = (pd.read_parquet(data_dir / f) for f in ("d.parquet", "b.parquet", "h.parquet"))
    key = lambda t: set(map(tuple, t[["query_id", "product_id"]].values))  # noqa: E731
    assert key(b) != key(d) and key(h) != key(d) and key(h) != key(b)
    ix = Bm25Index.load(data_dir / "indices_bm25")
    row = pd.Series(range(len(ix.ids)), index=ix.ids)
    for q, g in list(b.groupby("query"))[:20]:  # BM25's negatives share a term with their query
        assert (ix.score_rows(q, row.reindex(g["product_id"]).to_numpy()) > 0).all()
    gt = pd.read_parquet(data_dir / "ground_truth.parquet")
    pos = set(map(tuple, gt.loc[gt["esci_label"].isin(["E", "S", "C"]), ["query_id", "product_id"]].values))
    assert not (key(b) | key(h)) & pos  # judged positives are never negatives, whoever ranks them


def test_lexical_mismatch_keeps_only_candidates_that_match_the_words_worse_than_every_positive(
        data_dir, tiny_encoder_dir):
    from lexical import Bm25Index
    with pytest.raises(UserError, match="no BM25 index"):
        _mine(data_dir, tiny_encoder_dir, data_dir / "x.parquet", "--lexical-mismatch", "1")
    rx.main(rx.parse_args(["--bm25", "--data-dir", str(data_dir)]))
    strict = _mine(data_dir, tiny_encoder_dir, data_dir / "a.parquet", "--margin", "0.3", "--num-negatives", "100")
    kept = _mine(data_dir, tiny_encoder_dir, data_dir / "b.parquet", "--margin", "0.3", "--num-negatives", "100",
                 "--lexical-mismatch", "1")
    a, b = pd.read_parquet(data_dir / "a.parquet"), pd.read_parquet(data_dir / "b.parquet")
    over = b[b["score"] > 0.7 * b["pos_score"]]  # above the margin: kept only by the lexical check
    assert "kept_lexical_mismatch" not in strict["dropped"] and (a["score"] <= 0.7 * a["pos_score"]).all()
    assert len(over) == kept["dropped"]["kept_lexical_mismatch"] > 0
    assert kept["dropped"]["margin"] == strict["dropped"]["margin"] - len(over)
    key = lambda t: set(map(tuple, t[["query_id", "product_id"]].values))  # noqa: E731
    assert key(a) <= key(b)  # nothing the margin kept is lost
    ix = Bm25Index.load(data_dir / "indices_bm25")
    row = pd.Series(range(len(ix.ids)), index=ix.ids)
    gt = pd.read_parquet(data_dir / "ground_truth.parquet")
    pos = gt[gt["esci_label"].isin(["E", "S"])].groupby("query_id")["product_id"].apply(list)
    for (qid, q), g in over.groupby(["query_id", "query"]):  # each matches the words worse than every positive
        floor = ix.score_rows(q, row.reindex(pos[qid]).dropna().astype(int).to_numpy()).min()
        assert (ix.score_rows(q, row.reindex(g["product_id"]).to_numpy()) < floor).all()
    half = _mine(data_dir, tiny_encoder_dir, data_dir / "c.parquet", "--margin", "0.3", "--num-negatives", "100",
                 "--lexical-mismatch", "0.5")
    assert half["dropped"]["kept_lexical_mismatch"] < kept["dropped"]["kept_lexical_mismatch"]


def test_mining_is_deterministic_and_never_overwrites(data_dir, tiny_encoder_dir):
    _mine(data_dir, tiny_encoder_dir, data_dir / "a.parquet")
    _mine(data_dir, tiny_encoder_dir, data_dir / "b.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(data_dir / "a.parquet"), pd.read_parquet(data_dir / "b.parquet"))
    with pytest.raises(UserError, match="overwrite"):
        _mine(data_dir, tiny_encoder_dir, data_dir / "a.parquet")
    _mine(data_dir, tiny_encoder_dir, data_dir / "a.parquet", "--overwrite")


def test_encode_cache_hit_miss_and_resume(data_dir, tiny_encoder_dir, tmp_path, monkeypatch):
    model = TwoTowerModel.from_pretrained(str(tiny_encoder_dir))
    model.encode_dtype = torch.float32  # exact comparison: bf16 results depend on how batches are padded
    products = load_catalog(data_dir)
    cache = tmp_path / "cache"
    emb, meta = E.encode_catalog(model, products, cache, show_progress=False)
    ref = np.array(emb)
    assert ref.shape == (len(products), 32) and meta["fingerprint"]["count"] == len(products)
    calls = []
    orig = model.encode_products
    monkeypatch.setattr(model, "encode_products", lambda t, **k: calls.append(len(t)) or orig(t, **k))
    E.encode_catalog(model, products, cache, show_progress=False)
    assert calls == []  # unchanged model + catalog: cache hit
    E.encode_catalog(model, products.iloc[:-1], cache, show_progress=False)
    assert sum(calls) == len(products) - 1  # catalog changed: re-encoded
    # an interrupted encode resumes at its last completed chunk
    calls.clear()
    monkeypatch.setattr(E, "CHUNK", 100)
    shutil.rmtree(cache)
    state = {"n": 0}

    def flaky(t, **k):
        state["n"] += 1
        if state["n"] == 3:
            raise KeyboardInterrupt
        calls.append(len(t))
        return orig(t, **k)
    monkeypatch.setattr(model, "encode_products", flaky)
    with pytest.raises(KeyboardInterrupt):
        E.encode_catalog(model, products, cache, show_progress=False)
    assert calls == [100, 100]
    emb2, _ = E.encode_catalog(model, products, cache, show_progress=False)
    assert sum(calls) == len(products)  # rows 0-199 were not encoded again
    assert np.allclose(np.array(emb2), ref, atol=1e-6)


def test_reindex_writes_indices_and_refuses_mismatch(data_dir, tiny_encoder_dir, tmp_path):
    meta = rx.main(rx.parse_args(["--baseline", "--base-model", str(tiny_encoder_dir), "--data-dir", str(data_dir),
                                  "--index-factory", "IVF4,Flat", "--backend", "torch"]))
    d = data_dir / "indices_baseline"
    for f in ("faiss_index_flat.bin", "faiss_index_hnsw.bin", "faiss_index_custom.bin", "product_ids.parquet",
              "metadata.json"):
        assert (d / f).is_file(), f
    assert {p.name for p in d.iterdir()} == {  # no pickle or other stray files
        "faiss_index_flat.bin", "faiss_index_hnsw.bin", "faiss_index_custom.bin", "product_ids.parquet",
        "metadata.json"}
    # the embeddings live in the model's one cache, keyed by its fingerprint
    fp = TwoTowerModel.from_pretrained(str(tiny_encoder_dir)).fingerprint()
    assert meta["model_fingerprint"] == fp == meta["model"]["fingerprint"]
    assert {p.name for p in (data_dir / "embeddings_cache" / fp).iterdir()} == {"embeddings.npy", "embeddings.json"}
    assert meta["hnsw_vs_flat"]["recall@10"] > 0.9 and meta["ef_search"] == 128
    model = TwoTowerModel.from_pretrained(str(tiny_encoder_dir))
    products = load_catalog(data_dir)
    index, ids, m = E.load_index(d, "hnsw", model=model, products=products)
    assert index.ntotal == len(ids) == len(products)
    other = TwoTowerModel.from_pretrained(str(tiny_encoder_dir), projection_dim=8)
    with pytest.raises(UserError, match="rebuild"):
        E.load_index(d, "flat", model=other)
    with pytest.raises(UserError, match="another catalog"):
        E.load_index(d, "flat", products=products.iloc[:-3])
    with pytest.raises(UserError, match="not found"):
        E.load_index(tmp_path / "nowhere")


@pytest.mark.slow
def test_torchrun_two_processes_encode_slices(data_dir, tiny_encoder_dir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "reindex_with_trained_model.py"), "--baseline", "--base-model", str(tiny_encoder_dir),
           "--data-dir", str(data_dir), "--no-hnsw", "--backend", "torch"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    model = TwoTowerModel.from_pretrained(str(tiny_encoder_dir))
    d = data_dir / "embeddings_cache" / model.fingerprint()
    meta = json.loads((d / "embeddings.json").read_text())
    assert meta["processes"] == 2 and not list(d.glob("embeddings.part*"))
    products = load_catalog(data_dir)
    single = model.encode_products(products["product_text"].tolist())
    assert np.allclose(np.load(d / "embeddings.npy"), single, atol=1e-5)


def test_mining_and_reindex_share_one_encode(data_dir, tiny_encoder_dir, monkeypatch):
    """Mining with a checkpoint and then indexing it encodes the catalog once."""
    ck = data_dir / "m.pt"
    TwoTowerModel.from_pretrained(str(tiny_encoder_dir), projection_dim=8).save(ck)
    encoded = []
    orig = TwoTowerModel.encode_products
    monkeypatch.setattr(TwoTowerModel, "encode_products",
                        lambda self, t, **k: encoded.append(len(t)) or orig(self, t, **k))
    hnm.main(hnm.parse_args(["--checkpoint", str(ck), "--data-dir", str(data_dir), "--output",
                             str(data_dir / "hn.parquet"), "--backend", "torch"]))
    n = len(load_catalog(data_dir))
    assert sum(encoded) == n
    rx.main(rx.parse_args(["--checkpoint", str(ck), "--data-dir", str(data_dir), "--no-hnsw",
                           "--report-queries", "0", "--backend", "torch"]))
    assert sum(encoded) == n  # cache hit: no second encode


def _fake_cache(root, name, age_s):
    d = root / name
    d.mkdir(parents=True)
    for f in ("embeddings.npy", "embeddings.json"):
        (d / f).write_bytes(b"x")
        os.utime(d / f, (time.time() - age_s, time.time() - age_s))
    return d


def test_prune_caches_keeps_the_most_recently_used_and_the_current_entry(tmp_path):
    root = tmp_path / "embeddings_cache"
    old, mid, new, cur = (_fake_cache(root, n, a) for n, a in [("old", 300), ("mid", 200), ("new", 100), ("cur", 900)])
    assert E.prune_caches(root, 0, cur) == [] and len(list(root.iterdir())) == 4  # 0 keeps all
    removed = E.prune_caches(root, 3, cur)  # the current entry (oldest here) counts as one of the 3
    assert sorted(p.name for p in removed) == ["old"]
    assert sorted(p.name for p in root.iterdir()) == ["cur", "mid", "new"]
    assert [p.name for p in E.prune_caches(root, 1, cur)] == ["new", "mid"] and [p.name for p in root.iterdir()] == ["cur"]


def test_keep_caches_reaches_the_encode_phases_and_a_hit_counts_as_a_use(data_dir, tiny_encoder_dir):
    """reindex and mining prune the cache after their encode: --keep-caches 2 leaves the entry they
    used and the one used last before it; a cache hit makes an entry recent again."""
    root = data_dir / "embeddings_cache"
    stale, recent = _fake_cache(root, "stale", 300), _fake_cache(root, "recent", 100)
    base = ["--baseline", "--base-model", str(tiny_encoder_dir), "--data-dir", str(data_dir), "--backend", "torch"]
    rx.main(rx.parse_args([*base, "--no-hnsw", "--report-queries", "0", "--keep-caches", "2"]))
    model_dir = TwoTowerModel.from_pretrained(str(tiny_encoder_dir)).fingerprint()
    assert sorted(p.name for p in root.iterdir()) == sorted([model_dir, "recent"])
    for f in (root / model_dir).iterdir():  # the model's encode was long ago ...
        os.utime(f, (time.time() - 400, time.time() - 400))
    _fake_cache(root, "stale", 50)
    hnm.main(hnm.parse_args([*base, "--output", str(data_dir / "hn.parquet"), "--keep-caches", "2"]))  # ... a hit now
    assert sorted(p.name for p in root.iterdir()) == sorted([model_dir, "stale"])
    other = _fake_cache(root, "other", 10)
    assert [p.name for p in E.prune_caches(root, 2, other)] == ["stale"]  # the hit made the model's entry recent
    _fake_cache(root, "more", 5)
    rx.main(rx.parse_args([*base, "--no-hnsw", "--report-queries", "0", "--keep-caches", "0", "--overwrite"]))
    assert len(list(root.iterdir())) == 3  # 0 keeps all


def test_damaged_cache_is_encoded_again(data_dir, tiny_encoder_dir):
    model = TwoTowerModel.from_pretrained(str(tiny_encoder_dir))
    products = load_catalog(data_dir)
    emb, _ = E.catalog_embeddings(model, products, data_dir, show_progress=False)
    path = data_dir / "embeddings_cache" / model.fingerprint() / "embeddings.npy"
    bad = np.array(emb)
    bad[3, 0] = np.nan
    np.save(path, bad)
    again, _ = E.catalog_embeddings(model, products, data_dir, show_progress=False)
    assert np.isfinite(np.asarray(again)).all()


def test_mining_writes_the_model_s_rank_of_every_training_positive(data_dir, tiny_encoder_dir):
    """<output stem>_positive_ranks.parquet: each judged E/S/C product of the training queries, with
    the model's score and its rank over the whole catalog (-1 beyond --top-k), the same whether the
    negatives come from the model's ranking or from BM25's."""
    rx.main(rx.parse_args(["--bm25", "--data-dir", str(data_dir)]))
    stats = _mine(data_dir, tiny_encoder_dir, data_dir / "hn.parquet", "--top-k", "20", "--backend", "torch")
    r = pd.read_parquet(data_dir / "hn_positive_ranks.parquet")
    products = load_catalog(data_dir)
    tp = pd.read_parquet(data_dir / "training_pairs.parquet")
    gt = pd.read_parquet(data_dir / "ground_truth.parquet")
    want = gt[gt["esci_label"].isin(["E", "S", "C"]) & gt["query_id"].isin(tp["query_id"])
              & gt["product_id"].isin(products["product_id"])]
    assert sorted(zip(r["query_id"], r["product_id"])) == sorted(zip(want["query_id"], want["product_id"]))
    assert (r["top_k"] == 20).all()
    # the rank by an independent count over the catalog embeddings mining used (ties either way)
    model = TwoTowerModel.from_pretrained(str(tiny_encoder_dir))
    emb = np.load(next((data_dir / "embeddings_cache").glob("*/embeddings.npy")))
    queries = tp.drop_duplicates("query_id").set_index("query_id")["query"]
    s = model.encode_queries(queries.reindex(r["query_id"]).tolist()) @ emb.T  # (positives, catalog)
    row = pd.Series(np.arange(len(products)), index=products["product_id"].to_numpy())
    own = s[np.arange(len(r)), row.reindex(r["product_id"]).to_numpy()]
    assert np.allclose(own, r["score"], atol=1e-4)
    better, tied = (s > own[:, None] + 1e-5).sum(1) + 1, (s >= own[:, None] - 1e-5).sum(1)
    ranked = r["rank"].to_numpy() > 0
    assert ranked.any() and (~ranked).any()
    assert ((better <= r["rank"]) & (r["rank"] <= tied))[ranked].all()
    assert (tied[~ranked] > 20).all()
    assert stats["positive_ranks"]["within_10"] == int(((r["rank"] >= 1) & (r["rank"] <= 10)).sum())
    _mine(data_dir, tiny_encoder_dir, data_dir / "lex.parquet", "--top-k", "20", "--backend", "torch",
          "--mine-from", "bm25")
    lex = pd.read_parquet(data_dir / "lex_positive_ranks.parquet")
    pd.testing.assert_series_equal(lex["rank"], r["rank"])
