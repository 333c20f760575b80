"""bench/bench_quality.py end to end on the tiny sample (peers trained for real, a few steps each)."""
import json
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_bench_quality_every_system(tmp_path):
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    import bench_quality as bq
    from two_tower_model import TwoTowerModel
    ck = tmp_path / "trained.pt"
    base_model = bq.DEFAULT_BASE_MODEL  # the real MiniLM: a random encoder's ranking leaves mine_hard_negatives
    TwoTowerModel.from_pretrained(base_model).save(ck)  # no negatives to keep; "trained" = the baseline's weights
    out = tmp_path / "out"
    argv = ["--size", "tiny", "--checkpoint", str(ck),
            "--peers", "plain,mined,cached", "--peer-epochs", "1,2", "--peer-max-pairs", "48", "--peer-batch-size", "16",
            "--peer-mined-margin", "0.1", "--bootstrap", "50", "--work-dir", str(tmp_path / "work"), "--out-dir", str(out),
            "--resplit-queries", "0.5", "--tag", "t"]
    res = bq.main(bq.parse_args(argv))
    saved = json.loads((out / "quality_t.json").read_text())
    assert saved["table"] == res["table"]
    best = res["best_peer"]
    assert best in res["labels"] and best.startswith("peer:")
    shown = set(res["labels"])
    assert {"baseline", "bm25", "trained", "hybrid(trained+bm25)", f"hybrid({best}+bm25)"} <= shown
    assert {n.split("_e")[0] for n in shown if n.startswith("peer:")} == {"peer:plain", "peer:mined", "peer:cached"}
    # every recipe was trained at both epoch counts, and the row shows the better one
    assert set(res["peer_training"]) == {f"{r}_e{e}" for r in ("plain", "mined", "cached") for e in (1, 2)}
    for r, eps in res["peer_epochs"].items():
        row = next(n for n in shown if n.startswith(f"peer:{r}_e"))
        e_best = int(row.rsplit("_e", 1)[1])
        assert sum(eps[e_best]) == max(sum(v) for v in eps.values())
    assert res["peer_training"]["mined_e1"]["mined"]["num_negatives"] == 3
    assert res["peer_training"]["mined_e1"]["mined"]["relative_margin"] == 0.1
    t = res["table"]
    # identical weights: the trained row equals the baseline exactly, gain 0
    assert res["metrics"]["trained"]["recall@10"] == res["metrics"]["baseline"]["recall@10"]
    assert t["vs_baseline"]["trained"]["recall@10"]["gain"] == 0 and t["vs_best_peer"][best] == {}
    assert set(t["vs_best_peer"]["trained"]) >= {"recall@10", "ndcg@10", "ndcg@10_better_worse_same"}
    assert res["seconds"][best] > 0 and res["seconds"]["bm25"] >= 0
    # the peers were really trained: their embeddings differ from the base encoder's
    peer = TwoTowerModel.from_pretrained(str(tmp_path / "work" / "peers" / "plain_e1")).encode_products(["aa batteries"])
    base = TwoTowerModel.from_pretrained(base_model).encode_products(["aa batteries"])
    assert not np.allclose(peer, base, atol=1e-4)
    assert res["peer_training"]["plain_e1"]["max_steps"] == 3 and res["peer_training"]["cached_e1"]["batch_size"] == 16
    # a rerun with --reuse-peer trains nothing and gives the same table
    again = bq.main(bq.parse_args([*argv, "--reuse-peer"]))
    assert again["metrics"] == res["metrics"] and again["peer_training"] == res["peer_training"]
    # ... but a peer trained with other settings is not reused: only the mined recipe is retrained
    other = bq.main(bq.parse_args([*argv, "--reuse-peer", "--peer-mined-negatives", "1"]))
    assert other["peer_training"]["mined_e1"]["mined"]["num_negatives"] == 1
    assert {k: v for k, v in other["peer_training"].items() if not k.startswith("mined")} == \
        {k: v for k, v in res["peer_training"].items() if not k.startswith("mined")}
    # the sample is built as run_workflow.sh builds it (sample_catalog.py's own default seed)
    import sample_catalog
    made = json.loads((tmp_path / "work" / "raw" / "sample_catalog.json").read_text())
    assert made["seed"] == sample_catalog.parse_args([]).sample_seed
    md = (out / "quality_t.md").read_text()
    assert "peer: ST MNRL" in md and "KDD Task 1" in md and "BM25 (bm25s" in md and "vs best peer" in md
    # the length groups split the scored queries, and their means recombine to each system's mean
    groups = res["by_query_length"]
    assert sum(g["queries"] for g in groups.values()) == res["test_queries"] and "by query length" in md
    for name in res["labels"]:
        total = sum(g["queries"] * g["metrics"][name]["recall@10"] for g in groups.values() if g["queries"])
        assert total / res["test_queries"] == pytest.approx(res["metrics"][name]["recall@10"], abs=1e-3)


def test_query_length_groups_by_word_count():
    import pandas as pd

    import bench_quality as bq
    q = pd.DataFrame({"query_id": [1, 2, 3, 4, 5, 6],
                      "query": ["drill", "cordless  drill", "3/4 pex pipe", "ge profile microwave trim kit",
                                "a b c d e f g h", " tile "]})
    g = bq.query_length_groups(q)
    assert g == {"1 word": {1, 6}, "2 words": {2}, "3 words": {3}, "4+ words": {4, 5}}


def test_a_failing_workflow_is_one_line_and_exit_2(tmp_path, caplog):
    """A bad --raw-dir stops run_workflow.sh at prepare; bench_quality says so in one line (exit 2)."""
    import bench_quality as bq
    from cli import run_cli
    args = bq.parse_args(["--raw-dir", str(tmp_path / "missing"), "--peers", "", "--work-dir", str(tmp_path / "w"),
                          "--out-dir", str(tmp_path / "out")])
    assert run_cli(bq.main, args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("the workflow failed") and "\n" not in errors[0]
