import json
import os
import subprocess
import sys

import pytest

from conftest import REAL_ESCI, ROOT


def _run(tmp_path, *extra, timeout=900):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "run_workflow.sh"), "--data-dir", str(tmp_path / "data"),
                           "--checkpoint-dir", str(tmp_path / "ck"), *extra],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_fast_workflow_end_to_end_and_rerun_skips(tmp_path):
    r = _run(tmp_path, "--fast")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "data" / "eval" / "report.json").read_text())
    assert {"baseline", "trained", "delta", "ci95"} <= set(rep)
    assert "| recall@10 |" in r.stdout  # the comparison table is printed
    for f in ("stage1.pt", "stage2.pt", "stage3.pt", "best_model.pt"):
        assert (tmp_path / "ck" / f).is_file()
    again = _run(tmp_path, "--fast")
    assert again.returncode == 0
    assert again.stderr.count("up to date") == 10  # every step is skipped on a rerun
    redo = _run(tmp_path, "--fast", "--from", "reindex")
    assert redo.returncode == 0 and "[reindex] done" in redo.stderr and "[evaluate] done" in redo.stderr
    assert "[stage3] up to date" in redo.stderr and "[reindex] up to date" not in redo.stderr


def test_bad_option_and_failing_step_is_named(tmp_path):
    r = _run(tmp_path, "--from", "nonsense")
    assert r.returncode == 2 and "not a step" in r.stderr
    r = _run(tmp_path, "--raw-dir", str(tmp_path / "missing"))
    assert r.returncode == 1 and "step 'prepare' failed" in r.stderr


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_ESCI / "shopping_queries_dataset_examples.parquet").is_file(),
                    reason="shared real ESCI extract not present")
def test_workflow_on_real_esci_extract(tmp_path):
    r = _run(tmp_path, "--raw-dir", str(REAL_ESCI), "--", "--epoch-pairs", "64", "--batch-size", "16",
             "--val-corpus-size", "200", "--val-batches", "2", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "data" / "eval" / "report.json").is_file()


def test_help_prints_usage_only():
    r = subprocess.run(["bash", str(ROOT / "run_workflow.sh"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--resplit-queries" in r.stdout and "--from STEP" not in r.stderr
    assert "set -" not in r.stdout and not any(line.startswith("#") for line in r.stdout.splitlines())
