"""BM25 (lexical.py) on hand-made catalogs, its files and refusals; fusion (fusion.py, retrieval.py) on
hand-made runs, cross-checked against ranx's own fusion and metrics."""
import json
import math

import numpy as np
import pandas as pd
import pytest

import fusion
import retrieval as R
from lexical import Bm25Index
from fileio import atomic_dir
from utils import UserError

DOCS = pd.DataFrame({"product_id": ["d0", "d1", "d2", "d3"],
                     "product_text": ["Red shoes", "blue shoe laces", "red red hat", "3/4 in. PEX elbow, the brass"]})


def _lucene(tf, dl, avgdl, df, n, k1=1.2, b=0.75):
    """Lucene's BM25 term score: idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * dl / avgdl))


def test_bm25_scores_are_lucene_bm25_over_analysed_terms():
    ix = Bm25Index.build(DOCS, show_progress=False)
    # terms: d0 [red, shoe]  d1 [blue, shoe, lace]  d2 [red, red, hat]  d3 [3, 4, pex, elbow, brass] ("in" is a stop word)
    avgdl, n = (2 + 3 + 3 + 5) / 4, 4
    s = ix.scores("red shoe")
    assert s[0] == pytest.approx(_lucene(1, 2, avgdl, 2, n) + _lucene(1, 2, avgdl, 2, n), rel=1e-5)
    assert s[2] == pytest.approx(_lucene(2, 3, avgdl, 2, n), rel=1e-5)
    assert s[3] == 0
    rows, sc = ix.search(["red shoe"], 10)[0]
    assert rows.tolist() == [0, 2, 1] and np.all(np.diff(sc) <= 0)  # only rows sharing a term
    assert ix.search(["SHOES!"], 10)[0][0].tolist() == [0, 1]  # lower case + stems: shoes -> shoe
    assert ix.search(["3/4 pex"], 1)[0][0].tolist() == [3]  # one-character tokens are kept
    assert ix.search(["the zebra"], 10)[0][0].tolist() == []  # stop word + unknown word: no hit
    np.testing.assert_allclose(ix.score_rows("red shoe", np.array([2, 3])), s[[2, 3]], rtol=1e-6)


def test_bm25_options_change_the_index():
    base = Bm25Index.build(DOCS, show_progress=False).scores("red shoes")
    assert not np.allclose(Bm25Index.build(DOCS, k1=2.0, show_progress=False).scores("red shoes"), base)
    assert not np.allclose(Bm25Index.build(DOCS, b=0.0, show_progress=False).scores("red shoes"), base)
    nostem = Bm25Index.build(DOCS, stemmer="none", show_progress=False)
    assert nostem.search(["shoes"], 10)[0][0].tolist() == [0]  # without stems "shoes" is not "shoe"
    keep = Bm25Index.build(DOCS, stopwords="none", show_progress=False)
    assert keep.search(["the"], 10)[0][0].tolist() == [3]
    with pytest.raises(UserError, match="Snowball"):
        Bm25Index.build(DOCS, stemmer="klingon", show_progress=False)


def test_bm25_files_round_trip_and_refusals(tmp_path):
    out = tmp_path / "indices_bm25"
    meta = Bm25Index.build(DOCS, show_progress=False).save(out)
    assert set(meta["files"]) >= {"data.csc.index.npy", "vocab.index.json", "product_ids.parquet"}
    assert not [p for p in tmp_path.iterdir() if p.name != "indices_bm25"]  # no temporary left behind
    ix = Bm25Index.load(out, DOCS)
    assert ix.search(["red shoe"], 10)[0][0].tolist() == [0, 2, 1] and ix.ids.tolist() == DOCS["product_id"].tolist()
    assert not list(out.glob("*.pkl"))  # bm25s' own numpy arrays and JSON, no pickle
    with pytest.raises(UserError, match="no BM25 index in"):
        Bm25Index.load(tmp_path / "nowhere", DOCS)
    other = DOCS.assign(product_text=DOCS["product_text"].str.upper())
    with pytest.raises(UserError, match="another catalog .* stale"):
        Bm25Index.load(out, other)
    data = out / "data.csc.index.npy"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # one flipped byte: same size, other scores
    data.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="damaged .* rebuild it with"):
        Bm25Index.load(out, DOCS)
    (out / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match="metadata.json is damaged"):
        Bm25Index.load(out, DOCS)


def test_atomic_dir_keeps_the_old_directory_when_the_build_fails(tmp_path):
    out = tmp_path / "ix"
    with atomic_dir(out) as d:
        (d / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["ix"]
    with atomic_dir(out) as d:
        (d / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and [p.name for p in tmp_path.iterdir()] == ["ix"]


# ---------------------------------------------------------------------------------------------
# Fusion
# ---------------------------------------------------------------------------------------------
def test_fusion_hand_made():
    np.testing.assert_allclose(fusion.minmax([3, 2, 1]), [1, 0.5, 0])
    assert fusion.minmax([5.0]).tolist() == [1.0] and fusion.minmax([]).size == 0
    ids, sc = fusion.convex_fuse(["x", "y", "z"], [3, 2, 1], ["y", "w"], [10, 4], weight=0.3)
    # x: 0.3*1, y: 0.3*0.5 + 0.7*1, z: 0, w: 0.7*0 -> y, x, then z and w at 0 in order of appearance
    assert ids == ["y", "x", "z", "w"] and sc == pytest.approx([0.85, 0.3, 0.0, 0.0])
    assert fusion.convex_fuse(["x", "y"], [2, 1], ["y", "x"], [2, 1], 1.0)[0] == ["x", "y"]  # w = 1: dense order
    assert fusion.convex_fuse(["x", "y"], [2, 1], ["y", "x"], [2, 1], 0.0)[0] == ["y", "x"]  # w = 0: BM25 order
    ids, sc = fusion.rrf_fuse([["x", "y", "z"], ["y", "w"]], k=3)
    assert ids == ["y", "x", "w"] and sc[0] == pytest.approx(1 / 62 + 1 / 61)
    np.testing.assert_allclose(fusion.rrf_scores([0.9, 0.1], [0.0, 5.0], rrf_k=1), [1 / 2 + 1 / 3, 1 / 3 + 1 / 2])
    np.testing.assert_allclose(fusion.convex_scores([1, 3], [4, 2], 0.25), [0.75, 0.25])


def test_smoothed_best_prefers_a_broad_optimum_to_a_spike():
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert fusion.smoothed_best(grid, [0.1, 0.9, 0.1, 0.5, 0.6, 0.6, 0.5]) == pytest.approx(0.4)
    assert fusion.smoothed_best(grid, [0.5] * 7) == pytest.approx(0.3)  # all equal: the middle


def _random_runs(seed=0, n_q=30):
    rng = np.random.default_rng(seed)
    items = [f"p{i}" for i in range(80)]
    qrels, a, b = {}, R.Run(), R.Run()
    for q in range(n_q):
        judged = rng.choice(items, size=10, replace=False)
        qrels[f"q{q}"] = {i: "ESCI"[int(rng.integers(0, 4))] for i in judged}
        qrels[f"q{q}"][judged[0]] = "E"
        for run, n in ((a, 40), (b, int(rng.integers(0, 40)))):  # BM25 may return few hits, or none
            ids = rng.choice(items, size=n, replace=False).tolist()
            run.ids[f"q{q}"], run.scores[f"q{q}"] = ids, sorted(rng.random(n).tolist(), reverse=True)
    return qrels, a, b


def test_fused_runs_and_their_metrics_agree_with_ranx():
    ranx = pytest.importorskip("ranx")
    qrels, a, b = _random_runs()
    ra = ranx.Run({q: dict(zip(a.ids[q], a.scores[q])) for q in a.ids})
    # ranx needs at least one result per query: a query BM25 found nothing for gets a placeholder
    ra_b = ranx.Run({q: dict(zip(b.ids[q], b.scores[q])) or {"__none__": 0.0} for q in b.ids})
    rq = ranx.Qrels({q: {i: 1 for i, lab in j.items() if lab == "E"} for q, j in qrels.items()})
    for method, ours, theirs in (
            ("rrf", R.fused_run(a, b, "rrf", k=1000),
             ranx.fuse([ra, ra_b], method="rrf", norm=None, params={"k": 60})),
            ("convex", R.fused_run(a, b, "convex", 0.3, k=1000),
             ranx.fuse([ra, ra_b], method="wsum", norm="min-max", params={"weights": [0.3, 0.7]}))):
        t = theirs.to_dict()
        for q in qrels:
            mine = dict(zip(ours.ids[q], ours.scores[q]))
            for pid, s in t[q].items():
                if pid != "__none__":
                    assert mine[pid] == pytest.approx(s, abs=1e-9), (method, q, pid)
        m, _ = R.run_metrics(ours, qrels, None, ("E",), ks=(10,))
        # our ranked lists as ranked (equal fused scores keep first appearance; ranx orders ties its own way)
        ranked = {q: {pid: float(len(ours.ids[q]) - r) for r, pid in enumerate(ours.ids[q])} for q in qrels}
        their_m = ranx.evaluate(rq, ranx.Run(ranked), ["recall@10", "mrr"])
        assert m["recall@10"] == pytest.approx(their_m["recall@10"], abs=1e-6), method
        assert m["mrr"] == pytest.approx(their_m["mrr"], abs=1e-6), method


def test_hybrid_weight_is_confirmed_on_queries_that_did_not_choose_it():
    grid = R.WEIGHT_GRID
    w = np.array(grid)[:, None]
    fold = np.array([0] * 60 + [1] * 40)
    # the first half's queries score 1 only near w = 0.2, the second half's only near w = 0.8, none at 0.5:
    # the peak of all 100 (0.2) beats 0.5 on the queries that chose it with a CI far above 0 ...
    obj = np.where(fold == 0, np.abs(w - 0.2) < 0.15, np.abs(w - 0.8) < 0.15).astype(float)
    prior = grid.index(0.5)
    lo, _ = R.paired_bootstrap_ci(obj[prior], obj[grid.index(0.2)])
    assert R.fusion.smoothed_best(grid, obj.mean(1)) == 0.2 and lo > 0.4
    # ... but each half, scored at the other half's choice, gains nothing: 0.5 stays
    weight, why = R.gated_weight(grid, obj, fold)
    assert weight == 0.5 and why["best"] == 0.2 and why["fold_best"] == [0.8, 0.2] and why["ci"] == [0.0, 0.0]
    # a gain both halves share is taken
    shared = np.repeat((np.abs(w - 0.8) < 0.15).astype(float), 100, axis=1)
    weight, why = R.gated_weight(grid, shared, fold)
    assert weight == 0.8 and why["fold_best"] == [0.8, 0.8] and why["ci"][0] > 0
    # all queries in one half: nothing to confirm on, 0.5 stays; 0.5 at the peak needs no gate
    assert R.gated_weight(grid, shared, np.zeros(100, dtype=int))[0] == 0.5
    assert R.gated_weight(grid, np.repeat((np.abs(w - 0.5) < 0.15).astype(float), 100, axis=1), fold) == (0.5, {"best": 0.5})


def test_choose_weight_and_kdd_of_fused_runs():
    qrels, a, b = _random_runs(1)
    w, table, why = R.choose_weight(a, b, qrels)
    assert w in R.WEIGHT_GRID and len(table) == len(R.WEIGHT_GRID)
    assert R.choose_weight(a, b, {})[0] == 0.5  # no validation queries: the neutral weight
    # two unrelated random lists: the curve's peak is noise, not better than 0.5 beyond its CI
    assert why["best"] != 0.5 and why["ci"][0] <= 0 and w == 0.5
    # the same choice without the CI gate (prior outside the grid) is the smoothed peak
    assert R.choose_weight(a, b, qrels, prior=0.55)[0] == why["best"]
    # a dense run that ranks every query's E product first wins: the weight goes to the dense side
    for q, j in qrels.items():
        e = next(i for i, lab in j.items() if lab == "E")
        a.ids[q], a.scores[q] = [e] + [x for x in a.ids[q] if x != e][:39], list(np.linspace(1, 0, 40))
    w, _, why = R.choose_weight(a, b, qrels)
    assert w >= 0.7 and w == why["best"] and why["ci"][0] > 0  # a real gain over 0.5 is taken
    assert len(why["fold_best"]) == 2 and min(why["fold_best"]) >= 0.7  # both halves of the queries agree
    # KDD re-rank scores of the judged products are fused as the lists are
    a.judged, b.judged = {"q0": np.array([0.9, 0.1, 0.5])}, {"q0": np.array([0.0, 2.0, 1.0])}
    f = R.fused_run(R.Run(ids={"q0": a.ids["q0"]}, scores={"q0": a.scores["q0"]}, judged=a.judged),
                    R.Run(ids={"q0": b.ids["q0"]}, scores={"q0": b.scores["q0"]}, judged=b.judged), "convex", 0.5)
    np.testing.assert_allclose(f.judged["q0"], 0.5 * np.array([1, 0, 0.5]) + 0.5 * np.array([0, 1, 0.5]))


def test_report_json_carries_the_bm25_parameters(tmp_path):
    """What the reindex step writes: parameters, analyzer and checksums in metadata.json."""
    import reindex_with_trained_model as rx
    d = tmp_path / "data"
    d.mkdir()
    DOCS.assign(product_title=DOCS["product_text"]).to_parquet(d / "products_clean.parquet")
    meta = rx.main(rx.parse_args(["--bm25", "--data-dir", str(d), "--bm25-k1", "0.9", "--bm25-stemmer", "none"]))
    saved = json.loads((d / "indices_bm25" / "metadata.json").read_text())
    assert saved["k1"] == 0.9 and saved["analyzer"]["stemmer"] == "none" and saved == meta
    assert Bm25Index.load(d / "indices_bm25").search(["shoes"], 5)[0][0].tolist() == [0]
    with pytest.raises(UserError, match="--overwrite"):
        rx.main(rx.parse_args(["--bm25", "--data-dir", str(d)]))
    with pytest.raises(UserError, match="drop --baseline"):
        rx.main(rx.parse_args(["--bm25", "--baseline", "--data-dir", str(d), "--overwrite"]))
