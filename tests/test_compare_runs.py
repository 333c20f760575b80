"""bench/compare_runs.py: one system of two evaluation reports, paired query by query."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import compare_runs as cr  # noqa: E402

from utils import UserError  # noqa: E402

# q1: E item e1, S item s1; q2: E items e2, e3; q3 has no E item, so it is not scored
QRELS = ["q1 0 e1 3", "q1 0 s1 2", "q2 0 e2 3", "q2 0 e3 3", "q3 0 c9 1"]


def _eval_dir(d: Path, trained: list[str], qrels=QRELS) -> Path:
    d.mkdir()
    (d / "qrels.txt").write_text("\n".join(qrels) + "\n")
    (d / "trained.run").write_text("\n".join(trained) + "\n")
    return d


def _run(q: str, items: list[str]) -> list[str]:
    # written out of rank order: the reader must sort by the rank column, not trust the line order
    lines = [f"{q} Q0 {item} {r} {1.0 / r:.6f} trained" for r, item in enumerate(items, 1)]
    return lines[::-1]


def test_paired_difference_of_hand_made_runs(tmp_path):
    # A: q1 finds e1 at rank 12 (beyond 10), q2 finds both E items -> recall@10 (0 + 1) / 2
    a = _eval_dir(tmp_path / "a", _run("q1", [f"x{i}" for i in range(11)] + ["e1"]) + _run("q2", ["e2", "e3"]))
    # B: q1 finds e1 at rank 1, q2 finds one of its two E items -> recall@10 (1 + 0.5) / 2
    b = _eval_dir(tmp_path / "b", _run("q1", ["e1", "s1"]) + _run("q2", ["x", "e3"]))
    res = cr.main(cr.parse_args([str(a), str(b), "--bootstrap", "200"]))
    assert res["queries"] == 2
    assert res["a_metrics"]["recall@10"] == pytest.approx(0.5) and res["b_metrics"]["recall@10"] == pytest.approx(0.75)
    assert res["delta"]["recall@10"]["gain"] == pytest.approx(0.25)
    lo, hi = res["delta"]["recall@10"]["ci95"]
    assert -0.5 - 1e-9 <= lo <= 0.25 <= hi <= 1.0 + 1e-9  # per-query deltas are +1 and -0.5
    assert res["a_metrics"]["mrr"] == pytest.approx((1 / 12 + 1) / 2) and res["b_metrics"]["mrr"] == pytest.approx(0.75)
    # NDCG@10 with ESCI gains: B's q1 ranks E then S, the ideal order -> 1.0
    assert res["b_metrics"]["ndcg@10"] > res["a_metrics"]["ndcg@10"]


def test_identical_runs_differ_by_exactly_zero(tmp_path):
    lines = _run("q1", ["s1", "e1"]) + _run("q2", ["e3"])
    a, b = _eval_dir(tmp_path / "a", lines), _eval_dir(tmp_path / "b", lines)
    res = cr.main(cr.parse_args([str(a), str(b), "--bootstrap", "100"]))
    assert all(res["delta"][m]["gain"] == 0 and res["delta"][m]["ci95"] == [0, 0] for m in cr.METRICS)


def test_runs_scored_on_other_queries_are_refused(tmp_path):
    a = _eval_dir(tmp_path / "a", _run("q1", ["e1"]))
    b = _eval_dir(tmp_path / "b", _run("q1", ["e1"]), qrels=QRELS[:-1])
    with pytest.raises(UserError, match="not scored on the same test queries"):
        cr.main(cr.parse_args([str(a), str(b)]))
    (b / "qrels.txt").write_text("\n".join(QRELS) + "\n")
    (b / "trained.run").write_text("q1 Q0 e1 first 0.5 trained\n")
    with pytest.raises(UserError, match=r"trained.run:1: not a TREC run line"):
        cr.main(cr.parse_args([str(a), str(b)]))


def test_cli_names_a_missing_directory_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_runs.py"), str(tmp_path / "nope"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nope/qrels.txt does not exist" in r.stderr and "Traceback" not in r.stderr


def test_the_report_readers_invert_its_writers(tmp_path):
    import evaluate_trained_model as ev
    run = {"q1": ["p2", "p1"], "q2": ["p9"]}
    scores = {"q1": [0.9, 0.5], "q2": [0.1]}
    qrels = {"q1": {"p1": "E", "p2": "S"}, "q2": {"p9": "C", "p8": "I"}}
    (tmp_path / "a.run").write_text("\n".join(ev.trec_run_lines(run, scores, "a")[::-1]) + "\n")  # lines out of order
    (tmp_path / "qrels.txt").write_text("\n".join(ev.trec_qrels_lines(qrels)) + "\n")
    assert ev.read_trec_run(tmp_path / "a.run") == run
    assert ev.read_trec_qrels(tmp_path / "qrels.txt") == qrels


def test_slots_count_what_each_top_k_holds(tmp_path):
    # q1 (E e1, S s1): A ranks s1, x, e1 -> top 2 holds S and unjudged; q2 (E e2, e3): A ranks e2 only
    a = _eval_dir(tmp_path / "a", _run("q1", ["s1", "x", "e1"]) + _run("q2", ["e2"]))
    # B ranks e1, s1 for q1 and e3, c9 (judged C for q3 only, so unjudged for q2) for q2
    b = _eval_dir(tmp_path / "b", _run("q1", ["e1", "s1"]) + _run("q2", ["e3", "c9"]))
    res = cr.main(cr.parse_args([str(a), str(b), "--bootstrap", "50", "--slots", "2"]))
    # A: q1 S 1 + U 1, q2 E 1 (one slot empty); q3 has no E item and is not counted
    assert res["slots"]["a"] == pytest.approx({"E": 0.5, "S": 0.5, "C": 0.0, "I": 0.0, "U": 0.5})
    assert res["slots"]["b"] == pytest.approx({"E": 1.0, "S": 0.5, "C": 0.0, "I": 0.0, "U": 0.5})
    assert cr.top_slots({"q1": ["s1", "x", "e1"]}, {"q1": {"e1": "E", "s1": "S"}}, 3) == \
        pytest.approx({"E": 1.0, "S": 1.0, "C": 0.0, "I": 0.0, "U": 1.0})
