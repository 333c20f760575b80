"""bench/pseudo_queries.py: the title-span pseudo-queries of the docs/experiments.md lever."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import pseudo_queries as pq  # noqa: E402

TITLE = "Delta Vero 1-Handle Shower Faucet Trim Kit in Chrome (Valve Not Included)"


def test_title_span_comes_from_the_title_before_the_colour_and_has_no_edge_stop_words():
    main = "delta vero 1-handle shower faucet trim kit".split()
    seen = set()
    for seed in range(200):
        q = pq.title_span(TITLE, np.random.default_rng(seed))
        words = q.split()
        assert 1 <= len(words) <= 5
        assert all(w in main for w in words), q  # never "chrome", "valve" or "included"
        assert words[0] not in pq.STOP and words[-1] not in pq.STOP
        seen.add(q)
    assert "trim kit" in seen or "faucet trim kit" in seen  # the last words, where the product type is
    assert len(seen) > 10  # spans vary with the seed


@pytest.mark.parametrize("title", ["Hammer", "", "(Discontinued)", "in with for"])
def test_title_span_refuses_titles_without_two_words(title):
    assert pq.title_span(title, np.random.default_rng(0)) is None


def _prepared(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(parents=True)
    pairs = pd.DataFrame({"query_id": np.array([1, 1], dtype="int64"), "query": ["faucet", "faucet"],
                          "product_id": ["p1", "p2"], "product_text": [TITLE, "Hammer"],
                          "label": np.array([1.0, 0.0], dtype="float32"),
                          "weight": np.array([1.0, 1.0], dtype="float32"), "esci_label": ["E", None],
                          "neg_type": ["positive", "random"], "split": ["train", "train"],
                          "stage": np.array([1, 1], dtype="int8")})
    pairs.to_parquet(d / "training_pairs.parquet", index=False)
    pd.DataFrame({"product_id": ["p1", "p2", "p3"],
                  "product_text": [TITLE, "Hammer", "Everbilt 16 ft. x 20 ft. Brown Heavy Duty Tarp"]}
                 ).to_parquet(d / "products_clean.parquet", index=False)
    (d / "prepare_stats.json").write_text("{}")
    return d


def test_main_appends_stage_1_positives_in_the_same_schema_and_keeps_the_other_files(tmp_path):
    d = _prepared(tmp_path)
    out = tmp_path / "out"
    stats = pq.main(pq.parse_args(["--data-dir", str(d), "--out", str(out), "--n", "3", "--weight", "0.5"]))
    pairs = pd.read_parquet(out / "training_pairs.parquet")
    assert stats["pseudo_pairs"] == 2  # "Hammer" has one word
    assert len(pairs) == 4 and (pairs.dtypes == pd.read_parquet(d / "training_pairs.parquet").dtypes).all()
    new = pairs.iloc[2:]
    assert (new["query_id"] >= pq.FIRST_ID).all() and set(new["product_id"]) == {"p1", "p3"}
    assert (new["label"] == 1.0).all() and (new["weight"] == 0.5).all() and (new["stage"] == 1).all()
    assert (out / "products_clean.parquet").is_file() and (out / "prepare_stats.json").is_file()
    assert (out / "pseudo_queries_stats.json").is_file()


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path):
    d = _prepared(tmp_path)
    (d / "products_clean.parquet").unlink()
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "pseudo_queries.py"), "--data-dir", str(d),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "products_clean.parquet" in r.stderr and "not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    d2 = _prepared(tmp_path / "b")
    (tmp_path / "taken").mkdir()
    with pytest.raises(pq.UserError, match="already exists"):
        pq.main(pq.parse_args(["--data-dir", str(d2), "--out", str(tmp_path / "taken")]))
