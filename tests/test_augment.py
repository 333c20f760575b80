"""augment.py: realistic typing errors for training queries, on hand-made words."""
import numpy as np
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
