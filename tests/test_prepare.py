import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import prepare_training_data as prep
from conftest import REAL_ESCI, ROOT
from paths import EXAMPLES_FILE, PRODUCTS_FILE
from utils import UserError

OUTPUTS = ["products_clean.parquet", "training_pairs.parquet", "val_pairs.parquet", "test_pairs.parquet",
           "ground_truth.parquet", "prepare_stats.json"]


def _pairs(d):
    return pd.concat([pd.read_parquet(d / f"{n}.parquet") for n in ("training_pairs", "val_pairs", "test_pairs")])


def test_outputs_and_schema(tiny_data):
    for f in OUTPUTS:
        assert (tiny_data / f).is_file(), f
    tr = pd.read_parquet(tiny_data / "training_pairs.parquet")
    assert list(tr.columns) == ["query_id", "query", "product_id", "product_text", "label", "weight",
                                "esci_label", "neg_type", "split", "stage"]
    assert set(tr["neg_type"]) == {"positive", "labelled", "random"}
    assert (tr["product_text"].str.len() > 0).all() and "<" not in "".join(tr["product_text"])
    gt = pd.read_parquet(tiny_data / "ground_truth.parquet")
    assert list(gt.columns) == ["query_id", "query", "product_id", "esci_label", "split"]
    assert set(gt["split"]) == {"train", "val", "test"}
    stats = json.loads((tiny_data / "prepare_stats.json").read_text())
    assert stats["dropped"]["examples_other_locale"] > 0  # the sample's es/jp rows are filtered
    assert stats["pairs"]["train"]["pairs"] == len(tr)


def test_weights_labels_and_stages(tiny_data):
    p = _pairs(tiny_data)
    pos = p[p["label"] == 1]
    assert set(pos["esci_label"]) <= {"E", "S", "C"}
    assert pos.groupby("esci_label")["weight"].unique().apply(list).to_dict() == {
        "C": [pytest.approx(0.6)], "E": [1.0], "S": [pytest.approx(0.9)]}
    assert (pos.loc[pos["esci_label"] == "C", "stage"] == 3).all()
    assert (pos.loc[pos["esci_label"] != "C", "stage"] == 1).all()
    neg = p[p["label"] == 0]
    assert (neg.loc[neg["neg_type"] == "labelled", "esci_label"] == "I").all()
    assert neg.loc[neg["neg_type"] == "random", "esci_label"].isna().all()
    n_pos = len(pos)
    assert (neg["neg_type"] == "random").sum() == 2 * n_pos  # --neg-ratio 2


def test_no_query_in_two_splits_and_val_from_train(tiny_data, tiny_raw):
    p = _pairs(tiny_data)
    assert (p.groupby("query_id")["split"].nunique() == 1).all()
    ex = pd.read_parquet(tiny_raw / EXAMPLES_FILE)
    esci_split = ex.drop_duplicates("query_id").set_index("query_id")["split"]
    val_q = p.loc[p["split"] == "val", "query_id"].unique()
    assert len(val_q) > 0 and (esci_split[val_q] == "train").all()
    test_q = p.loc[p["split"] == "test", "query_id"].unique()
    assert (esci_split[test_q] == "test").all()


def test_random_negatives_never_judged_positive(tiny_data):
    gt = pd.read_parquet(tiny_data / "ground_truth.parquet")
    judged_pos = set(map(tuple, gt.loc[gt["esci_label"].isin(["E", "S", "C"]), ["query_id", "product_id"]].values))
    p = _pairs(tiny_data)
    rnd = p[p["neg_type"] == "random"]
    assert not (set(map(tuple, rnd[["query_id", "product_id"]].values)) & judged_pos)


def test_sample_random_negatives_avoids_dense_positives():
    rng = np.random.default_rng(0)
    n_cat = 10
    keys = np.array(sorted(q * n_cat + p for q in range(3) for p in range(8)), dtype=np.int64)
    q, p = prep.sample_random_negatives(np.array([0, 1, 2] * 5), keys, n_cat, 3, rng)
    assert set(p.tolist()) <= {8, 9}
    with pytest.raises(UserError):
        full = np.arange(n_cat, dtype=np.int64)
        prep.sample_random_negatives(np.array([0]), full, n_cat, 2, rng)


def test_deterministic_by_seed(tiny_raw, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        prep.main(prep.parse_args(["--raw-dir", str(tiny_raw), "--data-dir", str(tmp_path / name),
                                   "--seed", str(seed)]))
    a, b, c = (pd.read_parquet(tmp_path / n / "training_pairs.parquet") for n in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


# --- bad input: one clear line, exit 2, nothing half-written -----------------------------------
def _copy_raw(src, dst, ex=None, pr=None):
    dst.mkdir(parents=True, exist_ok=True)
    (ex if ex is not None else pd.read_parquet(src / EXAMPLES_FILE)).to_parquet(dst / EXAMPLES_FILE)
    (pr if pr is not None else pd.read_parquet(src / PRODUCTS_FILE)).to_parquet(dst / PRODUCTS_FILE)
    return dst


def _fails(raw, tmp_path, *match):
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        prep.main(prep.parse_args(["--raw-dir", str(raw), "--data-dir", str(out)]))
    msg = str(e.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg, msg
    assert not out.exists() or not any(out.iterdir()), "no partial outputs"
    return msg


def test_missing_file(tmp_path):
    _fails(tmp_path / "nowhere", tmp_path, EXAMPLES_FILE, "amazon-science/esci-data", "--make-sample")


def test_missing_columns(tiny_raw, tmp_path):
    ex = pd.read_parquet(tiny_raw / EXAMPLES_FILE).drop(columns=["esci_label", "query"])
    _fails(_copy_raw(tiny_raw, tmp_path / "raw", ex=ex), tmp_path, "esci_label", "query", EXAMPLES_FILE)


def test_unknown_labels(tiny_raw, tmp_path):
    ex = pd.read_parquet(tiny_raw / EXAMPLES_FILE)
    ex.loc[ex.index[:3], "esci_label"] = "exact"
    _fails(_copy_raw(tiny_raw, tmp_path / "raw", ex=ex), tmp_path, "esci_label", "exact")


def test_duplicate_product_ids(tiny_raw, tmp_path):
    pr = pd.read_parquet(tiny_raw / PRODUCTS_FILE)
    us = pr[pr["product_locale"] == "us"]
    pr = pd.concat([pr, us.head(2).assign(product_title="another title")])
    _fails(_copy_raw(tiny_raw, tmp_path / "raw", pr=pr), tmp_path, "product_id", "more than once",
           us["product_id"].iloc[0])


def test_examples_pointing_at_unknown_products(tiny_raw, tmp_path):
    pr = pd.read_parquet(tiny_raw / PRODUCTS_FILE)
    pr = pr.iloc[len(pr) // 3:]  # a third of the catalog is missing
    _fails(_copy_raw(tiny_raw, tmp_path / "raw", pr=pr), tmp_path, "not in", "same ESCI release")


def test_few_unknown_products_and_empty_text_are_counted_not_fatal(tiny_raw, tmp_path):
    pr = pd.read_parquet(tiny_raw / PRODUCTS_FILE)
    us = pr.index[pr["product_locale"] == "us"]
    pr.loc[us[:2], ["product_title", "product_bullet_point", "product_brand", "product_color"]] = None
    ex = pd.read_parquet(tiny_raw / EXAMPLES_FILE)
    ex.loc[ex.index[:2], "query"] = "   "
    raw = _copy_raw(tiny_raw, tmp_path / "raw", ex=ex, pr=pr)
    stats = prep.main(prep.parse_args(["--raw-dir", str(raw), "--data-dir", str(tmp_path / "out")]))
    assert stats["dropped"]["products_empty_text"] == 2
    assert stats["dropped"]["examples_empty_query"] == 2


def test_all_text_empty_is_fatal(tiny_raw, tmp_path):
    pr = pd.read_parquet(tiny_raw / PRODUCTS_FILE)
    pr[["product_title", "product_bullet_point"]] = float("nan")
    _fails(_copy_raw(tiny_raw, tmp_path / "raw", pr=pr), tmp_path, "no title or bullet text")


def test_not_parquet(tiny_raw, tmp_path):
    raw = _copy_raw(tiny_raw, tmp_path / "raw")
    (raw / PRODUCTS_FILE).write_bytes(b"PAR1 this is truncated")
    _fails(raw, tmp_path, "cannot read", PRODUCTS_FILE)


def test_cli_subprocess_one_line_error_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "prepare_training_data.py"), "--raw-dir", str(tmp_path / "x"),
                        "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert EXAMPLES_FILE in r.stderr


def test_cli_make_sample_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "prepare_training_data.py"), "--make-sample", "tiny",
                        "--raw-dir", str(tmp_path / "raw"), "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stderr and (tmp_path / "d" / "training_pairs.parquet").is_file()


@pytest.mark.skipif(not (REAL_ESCI / EXAMPLES_FILE).is_file(), reason="shared real ESCI extract not present")
def test_real_esci_extract(tmp_path):
    stats = prep.main(prep.parse_args(["--raw-dir", str(REAL_ESCI), "--data-dir", str(tmp_path)]))
    assert stats["examples_used"] > 1000 and stats["queries"]["test"] > 400
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert set(gt["esci_label"]) == set("ESCI")


def test_resplit_queries_by_stable_hash(tiny_raw, tmp_path):
    """--resplit-queries F: test = the queries whose id hashes below F, whatever the files' split;
    no query on both sides; the same split on every run."""
    out = tmp_path / "d"
    stats = prep.main(prep.parse_args(["--raw-dir", str(tiny_raw), "--data-dir", str(out),
                                       "--resplit-queries", "0.7"]))
    gt = pd.read_parquet(out / "ground_truth.parquet")
    qids = gt["query_id"].unique()
    expect_test = set(qids[prep.query_hash_unit(qids) < 0.7])
    by_split = gt.groupby("split")["query_id"].apply(set)
    assert by_split["test"] == expect_test
    assert not (by_split["test"] & (by_split["train"] | by_split["val"]))
    assert 0.5 < len(expect_test) / len(qids) < 0.9  # ~70%, unlike the sample's own ~30% test split
    assert stats["resplit_queries"] == 0.7 and "original_split_queries" in stats
    # stable: the hash of an id does not depend on the other ids or the run
    assert prep.query_hash_unit([qids[0]])[0] == prep.query_hash_unit(list(qids))[0]
    assert prep.query_hash_unit([12345])[0] == pytest.approx(prep.query_hash_unit(["12345"])[0])
    with pytest.raises(SystemExit):
        prep.parse_args(["--resplit-queries", "1.5"])
