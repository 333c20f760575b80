"""bench/bench_quality.py end to end on the tiny sample with a tiny encoder (peer trained for real)."""
import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_bench_quality_three_systems(tmp_path, tiny_encoder_dir):
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    import bench_quality as bq
    from two_tower_model import TwoTowerModel
    ck = tmp_path / "trained.pt"
    TwoTowerModel.from_pretrained(str(tiny_encoder_dir)).save(ck)  # "trained" = the baseline's weights
    out = tmp_path / "out"
    res = bq.main(bq.parse_args(["--size", "tiny", "--checkpoint", str(ck), "--base-model", str(tiny_encoder_dir),
                                 "--peer-max-pairs", "64", "--peer-batch-size", "16", "--bootstrap", "50",
                                 "--work-dir", str(tmp_path / "work"), "--out-dir", str(out),
                                 "--resplit-queries", "0.5", "--tag", "t"]))
    saved = json.loads((out / "quality_t.json").read_text())
    assert saved["table"] == res["table"]
    assert set(res["table"]) == {"baseline", "bm25", "peer", "trained", "hybrid(peer+bm25)", "hybrid(trained+bm25)",
                                 "trained_vs_peer", "trained_vs_bm25", "hybrid_vs_bm25", "hybrid_vs_peer"}
    assert set(res["hybrid_weights"]) == {"peer", "trained"}
    t = res["table"]
    # identical weights: the trained row equals the baseline exactly, gain 0
    assert t["trained"]["recall@10"] == t["baseline"]["recall@10"] and t["trained"]["recall@10_gain"] == 0
    # the peer was really trained: its embeddings differ from the base encoder's
    import numpy as np
    peer = TwoTowerModel.from_pretrained(str(tmp_path / "work" / "peer")).encode_products(["aa batteries 24 pack"])
    base = TwoTowerModel.from_pretrained(str(tiny_encoder_dir)).encode_products(["aa batteries 24 pack"])
    assert not np.allclose(peer, base, atol=1e-4)
    assert res["peer_training"]["max_steps"] == 4
    # the sample is built as run_workflow.sh builds it (sample_catalog.py's own default seed)
    import sample_catalog
    made = json.loads((tmp_path / "work" / "raw" / "sample_catalog.json").read_text())
    assert made["seed"] == sample_catalog.parse_args([]).sample_seed
    md = (out / "quality_t.md").read_text()
    assert "peer: ST MNRL fine-tune" in md and "KDD Task 1" in md and "BM25 (bm25s" in md and "Trained − BM25" in md
