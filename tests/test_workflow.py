import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import workflow_state as WS
from conftest import REAL_ESCI, ROOT


def _run(tmp_path, *extra, timeout=900):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "run_workflow.sh"), "--data-dir", str(tmp_path / "data"),
                           "--checkpoint-dir", str(tmp_path / "ck"), *extra],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def _dry(tmp_path, *extra):
    r = _run(tmp_path, "--dry-run", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _dry_steps(tmp_path, *extra):
    return [line.split()[0] for line in _dry(tmp_path, *extra).splitlines() if " would " in line]


def _ran(r):
    return [line.split("]")[0].split("[")[1] for line in r.stderr.splitlines()
            if line.startswith("=== [") and "] done in" in line]


@pytest.mark.slow
def test_fast_workflow_end_to_end_and_rerun_skips(tmp_path):
    r = _run(tmp_path, "--fast")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "data" / "eval" / "report.json").read_text())
    assert {"baseline", "trained", "delta", "ci95"} <= set(rep)
    assert "| recall@10 |" in r.stdout  # the comparison table is printed
    for f in ("stage1.pt", "stage2.pt", "stage3.pt", "best_model.pt"):
        assert (tmp_path / "ck" / f).is_file()
    m = json.loads((tmp_path / "ck" / "train_metrics.json").read_text())  # one pass a stage
    assert [(s["stage"], s["epochs"]) for s in m["stages"]] == [(1, 1), (2, 1), (3, 1)]
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    again = _run(tmp_path, "--fast")
    assert again.returncode == 0
    assert again.stderr.count("up to date") == 11  # every step is skipped on a rerun
    # --dry-run lists what a changed option or input would redo, and runs nothing
    assert "nothing to do" in _dry(tmp_path, "--fast")
    all_steps = ["sample", "prepare", "baseline_index", "bm25_index", "stage1", "mine1", "stage2", "mine2", "stage3",
                 "reindex", "evaluate"]
    assert _dry_steps(tmp_path) == all_steps  # without --fast: the small sample, so everything
    shutil.copytree(tmp_path / "data" / "raw", tmp_path / "raw2")  # the same files elsewhere: other data
    assert _dry_steps(tmp_path, "--fast", "--raw-dir", str(tmp_path / "raw2")) == all_steps[1:]
    assert _dry_steps(tmp_path, "--fast", "--", "--lr", "3e-5") == all_steps[4:]  # a training flag
    assert _dry_steps(tmp_path, "--fast", "--only", "evaluate", "--force") == ["evaluate"]
    assert (tmp_path / "data" / "raw" / "sample_catalog.json").is_file()
    (tmp_path / "data" / "eval" / "recall_at_k.png").unlink()  # a lost plot is noticed, not "up to date"
    assert _dry_steps(tmp_path, "--fast") == ["evaluate"]
    rep = json.loads((tmp_path / "data" / "eval" / "report.json").read_text())
    assert {"bm25", "hybrid(trained+bm25)"} <= set(rep["systems"])
    # a damaged BM25 file is rebuilt (its checksum is in metadata.json), and the report after it
    data = tmp_path / "data" / "indices_bm25" / "data.csc.index.npy"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    assert _dry_steps(tmp_path, "--fast") == ["bm25_index", "evaluate"]
    redo = _run(tmp_path, "--fast", "--from", "reindex")
    assert "[bm25_index] done" in redo.stderr  # the damaged index was rebuilt on the way
    assert redo.returncode == 0 and "[reindex] done" in redo.stderr and "[evaluate] done" in redo.stderr
    assert "[stage3] up to date" in redo.stderr and "[reindex] up to date" not in redo.stderr
    # --mine-flags reach both mining steps: changing them redoes mining and what reads its output
    mine = ["--mine-flags", "--false-negative-margin 0.2 --num-negatives 3"]
    assert _dry_steps(tmp_path, "--fast", *mine) == all_steps[5:]
    r = _run(tmp_path, "--fast", *mine, "--only", "mine1")
    assert r.returncode == 0 and _ran(r) == ["mine1"], r.stderr[-2000:]
    cfg = json.loads((tmp_path / "data" / "hard_negatives_stage2_stats.json").read_text())["config"]
    assert (cfg["false_negative_margin"], cfg["num_negatives"]) == (0.2, 3)


def test_bad_option_and_failing_step_is_named(tmp_path):
    r = _run(tmp_path, "--from", "nonsense")
    assert r.returncode == 2 and "not a step" in r.stderr
    r = _run(tmp_path, "--mine-flags")
    assert r.returncode == 2 and "--mine-flags needs a value" in r.stderr
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


@pytest.mark.slow
def test_replacing_the_raw_data_redoes_exactly_the_steps_that_read_it(tmp_path, tiny_raw):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    first = _run(tmp_path, "--raw-dir", str(raw), "--to", "baseline_index")
    assert first.returncode == 0, first.stderr[-2000:]
    assert _ran(first) == ["prepare", "baseline_index"]
    assert _ran(_run(tmp_path, "--raw-dir", str(raw), "--to", "baseline_index")) == []
    # the same products with one title changed: new data, same file name
    f = raw / "shopping_queries_dataset_products.parquet"
    df = pd.read_parquet(f)
    df.loc[0, "product_title"] = "completely different title"
    df.to_parquet(f, index=False)
    redo = _run(tmp_path, "--raw-dir", str(raw), "--to", "baseline_index")
    assert redo.returncode == 0, redo.stderr[-2000:]
    assert _ran(redo) == ["prepare", "baseline_index"]
    assert "shopping_queries_dataset_products.parquet changed" in redo.stderr
    # a query-level option of prepare only: prepare reruns, and so does the index it feeds
    assert _dry_steps(tmp_path, "--raw-dir", str(raw), "--to", "baseline_index", "--resplit-queries", "0.5") == \
        ["prepare", "baseline_index"]


def test_a_raw_folder_the_sample_step_did_not_make_is_never_overwritten(tmp_path, tiny_raw):
    raw = tmp_path / "data" / "raw"
    shutil.copytree(tiny_raw, raw)
    (raw / "sample_catalog.json").unlink()  # e.g. real ESCI files copied into data/raw
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    r = _run(tmp_path)
    assert r.returncode == 2 and "the sample step did not make" in r.stderr and "--raw-dir" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before


def test_step_records_decide_run_skip_and_resume(tmp_path):
    state, out, inp = tmp_path / "state", tmp_path / "out.json", tmp_path / "in.parquet"
    inp.write_text("a")
    assert WS.decide(state, "s", str(out), "--x 1", [str(inp)])[0] == "run"
    WS.start(state, "s", "--x 1", [str(inp)])
    assert WS.decide(state, "s", str(out), "--x 1", [str(inp)]) == \
        ("resume", "an earlier run with the same inputs and options was interrupted")
    out.write_text(json.dumps({"files": {}}))
    WS.done(state, "s")
    assert WS.decide(state, "s", str(out), "--x 1", [str(inp)]) == ("skip", "up to date")
    assert WS.decide(state, "s", str(out), "--x 2", [str(inp)]) == ("run", "options changed (-1 +2)")
    assert WS.decide(state, "s", str(out), "--x 1", [str(inp)], force="forced")[0] == "run"
    os.utime(inp, ns=(1, 1))  # same size, other modification time: another file as far as we can tell
    verdict, why = WS.decide(state, "s", str(out), "--x 1", [str(inp)])
    assert verdict == "run" and "in.parquet changed" in why
    WS.start(state, "s", "--x 1", [str(inp)])
    WS.done(state, "s")
    (tmp_path / "part.png").write_text("png")
    out.write_text(json.dumps({"files": {"part.png": WS.file_sha256(tmp_path / "part.png")}}))
    assert WS.decide(state, "s", str(out), "--x 1", [str(inp)])[0] == "skip"
    (tmp_path / "part.png").write_text("other")
    verdict, why = WS.decide(state, "s", str(out), "--x 1", [str(inp)])
    assert verdict == "run" and "part.png" in why
    out.unlink()
    assert WS.decide(state, "s", str(out), "--x 1", [str(inp)]) == ("run", f"its output {out} is missing")


def test_sample_origin(tmp_path, tiny_raw):
    assert WS.sample_origin(tmp_path / "none", "tiny", 0)[0] == "absent"
    assert WS.sample_origin(tiny_raw, "tiny", 0)[0] == "ours"
    assert WS.sample_origin(tiny_raw, "small", 0)[0] == "other"
    assert WS.sample_origin(tiny_raw, "tiny", 42)[0] == "other"


@pytest.mark.slow
def test_a_prompt_using_base_model_through_the_whole_workflow(tmp_path, tiny_encoder_dir):
    """A locally saved tiny BERT with E5-style prompts trains, mines, reindexes and evaluates; the
    index holds the prompted product embeddings. A BGE-style setting (query instruction only) then
    redoes training and what follows it."""
    import numpy as np

    from embeddings import load_index
    from two_tower_model import TwoTowerModel
    from fileio import load_catalog
    e5 = ["--base-model", str(tiny_encoder_dir), "--query-prompt", "query: ", "--product-prompt", "passage: "]
    r = _run(tmp_path, "--fast", "--", *e5)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "data" / "eval" / "report.json").is_file()
    best = TwoTowerModel.from_pretrained(tmp_path / "ck" / "best_model.pt")
    assert (best.config.query_prompt, best.config.product_prompt) == ("query: ", "passage: ")
    products = load_catalog(tmp_path / "data")
    index, ids, _ = load_index(tmp_path / "data" / "indices", "flat", best, products)
    texts = products.set_index("product_id").loc[ids[:20], "product_text"].tolist()
    stored = index.reconstruct_n(0, 20)
    np.testing.assert_allclose(stored, best.encode_products(texts), atol=2e-2)
    best.config.product_prompt = ""
    assert np.abs(stored - best.encode_products(texts)).max() > 0.05  # the prompt is really applied
    bge = ["--base-model", str(tiny_encoder_dir), "--query-prompt", "Represent this sentence for searching "
           "relevant passages: "]
    assert _dry_steps(tmp_path, "--fast", "--", *bge) == ["stage1", "mine1", "stage2", "mine2", "stage3",
                                                          "reindex", "evaluate"]
    r = _run(tmp_path, "--fast", "--to", "mine1", "--", *bge)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _ran(r) == ["stage1", "mine1"]
    s1 = TwoTowerModel.from_pretrained(tmp_path / "ck" / "stage1.pt")
    assert s1.config.query_prompt.startswith("Represent") and s1.config.product_prompt == ""
