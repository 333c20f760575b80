import numpy as np
import pandas as pd
import pyarrow.parquet as pq

import sample_catalog as sc
from paths import EXAMPLES_COLUMNS, EXAMPLES_FILE, PRODUCTS_COLUMNS, PRODUCTS_FILE


def test_exact_esci_schema_and_file_names(tiny_raw):
    assert pq.read_schema(tiny_raw / EXAMPLES_FILE).names == EXAMPLES_COLUMNS
    assert pq.read_schema(tiny_raw / PRODUCTS_FILE).names == PRODUCTS_COLUMNS
    ex = pd.read_parquet(tiny_raw / EXAMPLES_FILE)
    assert set(ex["esci_label"]) <= set("ESCI") and set(ex["split"]) == {"train", "test"}
    assert ex["example_id"].is_unique


def test_deterministic_by_seed(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    sc.make_sample_catalog(a, "tiny", seed=5)
    sc.make_sample_catalog(b, "tiny", seed=5)
    sc.make_sample_catalog(c, "tiny", seed=6)
    for f in (EXAMPLES_FILE, PRODUCTS_FILE):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f), pd.read_parquet(b / f))
    assert not pd.read_parquet(a / PRODUCTS_FILE).equals(pd.read_parquet(c / PRODUCTS_FILE))


def test_products_unique_per_locale_and_examples_join(tiny_raw):
    pr = pd.read_parquet(tiny_raw / PRODUCTS_FILE)
    ex = pd.read_parquet(tiny_raw / EXAMPLES_FILE)
    assert not pr.duplicated(["product_id", "product_locale"]).any()
    assert {"us", "es", "jp"} >= set(pr["product_locale"]) and (pr["product_locale"] != "us").any()
    m = ex.merge(pr, on=["product_id", "product_locale"], how="left")
    assert m["product_title"].notna().all()
    # a query's judged products share its locale, and a query has one split
    assert (ex.groupby("query_id")["product_locale"].nunique() == 1).all()
    assert (ex.groupby("query_id")["split"].nunique() == 1).all()


def test_small_sample_realism():
    """Label mix near ESCI, ~16 judged per query, ~70/30 split, missing fields, query phenomena."""
    cat = sc.Catalog(4000, seed=0)
    assert len(sc.TYPES) >= 20
    rng = np.random.default_rng(0)
    queries, labels, sizes = [], [], []
    for s in rng.integers(0, cat.n, size=400):
        q, cons = sc.make_query(cat, int(s), rng)
        rows, lab = sc.judge(cat, cons, int(s), int(rng.poisson(16)), rng)
        queries.append(q); labels.extend(lab); sizes.append(len(rows))
    mix = pd.Series(labels).value_counts(normalize=True)
    assert 0.50 <= mix["E"] <= 0.75 and 0.12 <= mix["S"] <= 0.38 and 0.05 <= mix["I"] <= 0.2
    assert 0.005 <= mix.get("C", 0) <= 0.06
    assert 13 <= np.mean(sizes) <= 19
    text = " | ".join(queries)
    for phenomenon in ("without ", " pack", "size ", "for ", "!"):
        assert phenomenon in text, phenomenon


def test_label_rules():
    cat = sc.Catalog(3000, seed=1)
    i = int(np.flatnonzero((cat.attr >= 0) & (cat.locale == 0))[0])
    t = int(cat.type[i])
    cons = {"type": t, "attr": int(cat.attr[i]), "brand": int(cat.brand[i])}
    rows = np.arange(cat.n)
    lab = sc.label_candidates(cat, cons, rows)
    same = cat.type == t
    misses = (cat.attr != cons["attr"]).astype(int) + (cat.brand != cons["brand"])
    assert (lab[same & (misses == 0)] == "E").all() and lab[i] == "E"
    assert (lab[same & (misses == 1)] == "S").all()
    assert (lab[same & (misses == 2)] == "I").all()
    comp = np.isin(cat.type, [sc.TYPE_INDEX[k] for k in sc.TYPES[t].complements])
    assert (lab[comp] == "C").all()
    assert set(lab[~same & ~comp]) <= {"S", "I"}


def test_negation_query_labels_featureless_products_exact():
    cat = sc.Catalog(3000, seed=2)
    fan = sc.TYPE_INDEX["bathroom_fan"]
    i = int(np.flatnonzero((cat.type == fan) & (cat.feature == 0))[0])
    lab = sc.label_candidates(cat, {"type": fan, "feature": 0}, np.arange(cat.n))
    assert (lab[(cat.type == fan) & (cat.feature == 1)] == "S").all()
    assert (lab[(cat.type == fan) & (cat.feature == 0)] == "E").all() and lab[i] == "E"


def test_cli_main(tmp_path):
    s = sc.main(sc.parse_args(["--size", "tiny", "--raw-dir", str(tmp_path), "--n-products", "300"]))
    assert s["n_products"] == 300 and (tmp_path / "sample_catalog.json").is_file()
