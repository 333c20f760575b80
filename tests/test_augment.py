"""augment.py: realistic typing errors for training queries, and title-span pseudo-queries, on hand-made
words and titles."""
import numpy as np
import pandas as pd
import pytest

import augment as A


def test_each_edit_kind():
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = A.typo("recessed", "drop", rng)
        assert len(w) == 7 and w[0] == "r"
        w = A.typo("recessed", "double", rng)
        assert len(w) == 9 and w[0] == "r"
        w = A.typo("recessed", "swap", rng)
        assert sorted(w) == sorted("recessed") and w != "recessed" and w[0] == "r"
        w = A.typo("recessed", "key", rng)
        diff = [i for i, (a, b) in enumerate(zip(w, "recessed")) if a != b]
        assert len(w) == 8 and len(diff) == 1 and w[diff[0]] in A.KEY_NEIGHBOURS["recessed"[diff[0]]]
    assert set("adwexz") <= set(A.KEY_NEIGHBOURS["s"]) and "p" not in A.KEY_NEIGHBOURS["s"]
    assert "g" in A.KEY_NEIGHBOURS["h"] and "j" in A.KEY_NEIGHBOURS["h"] and "q" not in A.KEY_NEIGHBOURS["h"]


def test_numbers_sizes_and_short_words_are_never_touched():
    rng = np.random.default_rng(1)
    for q in ("3/4 pex", "60x72", "led 2x4", "ac", "r19"):
        assert A.augment_queries([q] * 20, 1.0, rng) == [q] * 20
    out = A.augment_queries(["3/4 pex elbow"] * 20, 1.0, rng)
    assert all(o.startswith("3/4 pex ") and o != "3/4 pex elbow" for o in out)


def test_rate_and_determinism():
    qs = [f"flourescent light bulb {i}" for i in range(2000)]
    a = A.augment_queries(qs, 0.3, np.random.default_rng(7))
    assert a == A.augment_queries(qs, 0.3, np.random.default_rng(7))  # same generator, same queries
    changed = sum(x != y for x, y in zip(a, qs)) / len(qs)
    assert changed == pytest.approx(0.3, abs=0.04)
    assert A.augment_queries(qs, 0.0, np.random.default_rng(7)) == qs


CATALOG = pd.DataFrame({"product_id": ["p1", "p2", "p3", "p4"],
                        "product_text": ["Delta Vero 1-Handle Shower Faucet Trim Kit in Chrome (Valve Not Included)",
                                         "Hammer", "Everbilt 16 ft. x 20 ft. Brown Heavy Duty Tarp",
                                         "Glacier Bay Sink Strainer in Stainless Steel"]})


def test_pseudo_query_pairs_are_spans_of_their_own_products_titles_and_repeat_for_a_seed():
    out = A.pseudo_query_pairs(CATALOG["product_id"], CATALOG["product_text"], 10)
    assert list(out.columns) == ["pick", "query", "product_id"]
    assert set(out["product_id"]) == {"p1", "p3", "p4"}  # all drawn (n >= catalog); "Hammer" has one word
    assert out["pick"].is_unique and out["pick"].between(0, 3).all()
    title = CATALOG.set_index("product_id")["product_text"].str.lower()
    for q, pid in zip(out["query"], out["product_id"]):
        assert all(w in title[pid] for w in q.split()), (q, pid)
    again = A.pseudo_query_pairs(CATALOG["product_id"], CATALOG["product_text"], 10)
    assert out.equals(again)  # the default seed: the same spans whatever the training seed
    assert len(A.pseudo_query_pairs(CATALOG["product_id"], CATALOG["product_text"], 2)) <= 2
    assert A.pseudo_query_pairs(CATALOG["product_id"], CATALOG["product_text"], 0).empty
    assert A.pseudo_query_pairs([], [], 5).empty
