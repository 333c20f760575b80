import json
import shutil
import subprocess
import sys

import pytest

import demo_trained_model as demo_mod
import reindex_with_trained_model as rx
from conftest import ROOT
from two_tower_model import TwoTowerModel
from utils import UserError


@pytest.fixture(scope="module")
def demo_env(tiny_data, tiny_encoder_dir, tmp_path_factory):
    """Tiny data + a 'trained' checkpoint + both indices, built once for the demo tests."""
    d = tmp_path_factory.mktemp("demo") / "data"
    shutil.copytree(tiny_data, d, ignore=shutil.ignore_patterns("indices*", "embeddings_cache", "hard_negatives*"))
    ck = d.parent / "trained.pt"
    m = TwoTowerModel.from_pretrained(str(tiny_encoder_dir), projection_dim=16)
    m.save(ck)
    rx.main(rx.parse_args(["--checkpoint", str(ck), "--data-dir", str(d)]))
    rx.main(rx.parse_args(["--baseline", "--base-model", str(tiny_encoder_dir), "--data-dir", str(d)]))
    rx.main(rx.parse_args(["--bm25", "--data-dir", str(d)]))
    return d, ck, tiny_encoder_dir


def _argv(env, *extra):
    d, ck, enc = env
    return ["--data-dir", str(d), "--checkpoint", str(ck), "--base-model", str(enc), *extra]


def test_query_flag_json(demo_env, capsys):
    demo_mod.main(demo_mod.parse_args(_argv(demo_env, "--query", "aa batteries 24 pack", "--query", "yoga mat",
                                             "--json", "--k", "5")))
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["query"] for x in lines] == ["aa batteries 24 pack", "yoga mat"]
    r = lines[0]
    assert set(r["systems"]) == {"trained", "baseline"} and len(r["systems"]["trained"]) == 5
    assert {"rank", "score", "product_id", "title", "esci_label"} <= set(r["systems"]["baseline"][0])
    assert 0 <= r["overlap"] <= 5


def test_labels_shown_for_judged_pairs(demo_env, capsys):
    import pandas as pd
    d = demo_env[0]
    gt = pd.read_parquet(d / "ground_truth.parquet")
    q = gt["query"].iloc[0]
    demo = demo_mod.main(demo_mod.parse_args(_argv(demo_env, "--query", q, "--json", "--k", "50")))
    res = json.loads(capsys.readouterr().out)
    labels = [r["esci_label"] for r in res["systems"]["baseline"] if r["esci_label"]]
    assert labels and set(labels) <= set("ESCI")
    assert demo.startup_s < 60


def test_loop_commands_and_bad_input(demo_env, capsys):
    demo = demo_mod.Demo(demo_mod.parse_args(_argv(demo_env)))
    lines = iter(["", "   ", ":k 3", "red running shoes size 10", ":embed", ":hnsw", "x" * 5000, ":bogus",
                  "ñandú café 🙂 über", ":flat", ":k 0", ":help", ":quit", "never answered"])
    demo.loop(lines)
    out = capsys.readouterr().out
    assert out.count("empty query") == 2
    assert "top 3" in out and "norm 1.0000" in out and "cosine to top-1" in out
    assert "query cut to 500 characters" in out
    assert "unknown command" in out and "ñandú" in out and "commands:" in out
    assert "never answered" not in out


def test_missing_index_is_a_clear_error(demo_env, tmp_path):
    with pytest.raises(UserError, match="index file not found"):
        demo_mod.main(demo_mod.parse_args(_argv(demo_env, "--index-dir", str(tmp_path), "--query", "x")))


def test_subprocess_piped_stdin(demo_env):
    r = subprocess.run([sys.executable, str(ROOT / "demo_trained_model.py"), *_argv(demo_env, "--k", "3")],
                       input="aa batteries\n\n:k 2\ndog leash\n", capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "query: 'aa batteries'" in r.stdout and "query: 'dog leash'" in r.stdout
    assert "empty query" in r.stdout and "trained" in r.stdout and "baseline" in r.stdout


def test_hybrid_shows_the_fused_ranking(demo_env, capsys, tmp_path):
    import fusion
    d = demo_env[0]
    argv = _argv(demo_env, "--query", "aa batteries 24 pack", "--json", "--top-k", "5", "--hybrid", "--no-baseline")
    demo = demo_mod.main(demo_mod.parse_args([*argv, "--hybrid-weight", "0.3"]))
    res = json.loads(capsys.readouterr().out)
    assert list(res["systems"]) == ["trained", "hybrid(trained+bm25)"] and res["hybrid_weight"] == 0.3
    # the shown list is the fusion of the two systems' lists, as the evaluation fuses them
    dense, bm25 = demo.systems[1].dense, demo.systems[1].bm25
    ids, _ = fusion.convex_fuse(*dense.search("aa batteries 24 pack", 200), *bm25.search("aa batteries 24 pack", 200),
                                0.3, 5)
    assert [r["product_id"] for r in res["systems"]["hybrid(trained+bm25)"]] == ids
    # without --hybrid-weight: the weight the evaluation chose on the validation queries
    (d / "eval").mkdir(exist_ok=True)
    (d / "eval" / "report.json").write_text(json.dumps({"hybrid": {"weights": {"trained": 0.7}}}))
    demo_mod.main(demo_mod.parse_args(argv))
    assert json.loads(capsys.readouterr().out)["hybrid_weight"] == 0.7
    (d / "eval" / "report.json").unlink()
    demo_mod.main(demo_mod.parse_args(argv))
    assert json.loads(capsys.readouterr().out)["hybrid_weight"] == 0.5  # no report: the neutral weight
    with pytest.raises(UserError, match="no BM25 index in"):
        demo_mod.main(demo_mod.parse_args([*argv, "--bm25-index-dir", str(tmp_path)]))
