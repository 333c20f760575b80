"""One CLI language across the scripts: --version everywhere, one default --seed, the unified option
names in --help, the old spellings still parsing (hidden), one overwrite policy, --quiet, and the
optional --tensorboard dependency named when it is missing."""
import argparse
import importlib
import re
import subprocess
import sys

import pytest
from conftest import ROOT

import cli
import utils
from cli import DEFAULT_SEED, SAMPLE_SEED, SUITE_VERSION

# each script with the least argv its parser needs
from utils import UserError

# each script with the least argv its parser needs
SCRIPTS = {
    "sample_catalog": [],
    "prepare_training_data": [],
    "train_two_tower": ["--stage", "1"],
    "hard_negative_mining": [],
    "reindex_with_trained_model": [],
    "evaluate_trained_model": [],
    "demo_trained_model": [],
    "export_model": ["--checkpoint", "c.pt", "--output", "out"],
    "two_tower_model": ["--query", "q", "--product", "p"],
    "workflow_state": ["done", "state", "step"],
}
BENCH = ["bench_bm25", "bench_encode", "bench_gemm", "bench_mining", "bench_optimizer", "bench_prepare", "bench_quality",
         "bench_train", "pseudo_queries", "weight_average"]

# (script, old spelling argv, dest, expected value, the new name shown in --help)
OLD_SPELLINGS = [
    ("demo_trained_model", ["--k", "5"], "top_k", 5, "--top-k"),
    ("hard_negative_mining", ["--batch-size", "8"], "encode_batch_size", 8, "--encode-batch-size"),
    ("hard_negative_mining", ["--margin", "0.2"], "false_negative_margin", 0.2, "--false-negative-margin"),
    ("hard_negative_mining", ["--query-batch", "10"], "query_batch_size", 10, "--query-batch-size"),
    ("reindex_with_trained_model", ["--batch-size", "8"], "encode_batch_size", 8, "--encode-batch-size"),
    ("reindex_with_trained_model", ["--index-dir", "x"], "out_dir", "x", "--out-dir"),
    ("prepare_training_data", ["--version", "small"], "esci_version", "small", "--esci-version"),
    ("sample_catalog", ["--seed", "3"], "sample_seed", 3, "--sample-seed"),
    ("two_tower_model", ["--model", "m"], "checkpoint", "m", "--checkpoint"),
]


def _bench(name):
    sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


def _help(mod, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        mod.parse_args(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(SCRIPTS) + BENCH)
def test_every_script_prints_the_suite_version(name, capsys):
    mod = _bench(name) if name in BENCH else importlib.import_module(name)
    with pytest.raises(SystemExit) as e:
        mod.parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip().endswith(SUITE_VERSION)


def test_the_workflow_prints_the_suite_version_and_its_help_names_quiet():
    r = subprocess.run(["bash", str(ROOT / "run_workflow.sh"), "--version"], capture_output=True, text=True,
                       env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip().endswith(SUITE_VERSION), r.stderr
    h = subprocess.run(["bash", str(ROOT / "run_workflow.sh"), "--help"], capture_output=True, text=True)
    assert "--quiet" in h.stdout and "--version" in h.stdout


def test_one_default_seed_and_one_sample_catalog():
    seeds = {}
    for name, argv in SCRIPTS.items():
        ns = importlib.import_module(name).parse_args(argv)
        if "seed" in vars(ns):
            seeds[name] = ns.seed
    assert set(seeds.values()) == {DEFAULT_SEED} and len(seeds) == 5, seeds  # prepare, train, mine, reindex, evaluate
    # the sample catalog: the generator, prepare --make-sample and the workflow build the same one
    import prepare_training_data as prep
    import sample_catalog as sc
    assert sc.parse_args([]).sample_seed == prep.parse_args([]).sample_seed == SAMPLE_SEED
    wf = (ROOT / "run_workflow.sh").read_text()
    assert re.search(rf"^SAMPLE_SEED={SAMPLE_SEED}\b", wf, re.M)
    import inspect
    assert inspect.signature(sc.make_sample_catalog).parameters["seed"].default == SAMPLE_SEED


@pytest.mark.parametrize("name,argv,dest,value,new", OLD_SPELLINGS, ids=[" ".join(o[1]) + "@" + o[0] for o in OLD_SPELLINGS])
def test_old_spellings_still_parse_but_help_shows_only_the_new_name(name, argv, dest, value, new, capsys):
    mod = importlib.import_module(name)
    ns = mod.parse_args(SCRIPTS[name] + argv)
    got = getattr(ns, dest)
    assert (str(got) if isinstance(value, str) else got) == value
    assert "old spelling of " + new in capsys.readouterr().err
    help_text = _help(mod, capsys)
    assert new in help_text
    listed = rf"(^\s+|\[|, ){re.escape(argv[0])}(?![\w-])"  # in the usage line or the option list
    hidden = argv[0] == "--version" or not re.search(listed, help_text, re.M)  # --version: now the suite's
    assert hidden, f"{argv[0]} is not hidden"
    # the new name gives the same value, silently
    ns2 = mod.parse_args(SCRIPTS[name] + [new, argv[1]])
    assert getattr(ns2, dest) == got
    assert "old spelling" not in capsys.readouterr().err


def test_an_old_spelling_that_is_not_given_keeps_the_default():
    import hard_negative_mining as hn
    ns = hn.parse_args([])
    assert ns.false_negative_margin == 0.05 and ns.encode_batch_size == 64 and ns.query_batch_size == 1024


def test_option_names_mean_one_thing_across_scripts(capsys):
    """--top-k is results per query everywhere; --batch-size only ever the training batch; --margin
    only the training loss's; --index-dir only an input; --out-dir/--output only outputs."""
    helps = {n: _help(importlib.import_module(n), capsys) for n in SCRIPTS if n != "workflow_state"}
    for name, h in helps.items():
        if name != "train_two_tower":
            assert not re.search(r"(^\s+|\[)--batch-size(?![\w-])", h, re.M), name
            assert not re.search(r"(^\s+|\[)--margin(?![\w-])", h, re.M), name
        assert not re.search(r"(^\s+|\[)--k(?![\w-])", h, re.M), name
        assert not re.search(r"(^\s+|\[)--model(?![\w-])", h, re.M), name
    assert not re.search(r"(^\s+|\[)--index-dir", helps["reindex_with_trained_model"], re.M)
    for name in ("evaluate_trained_model", "demo_trained_model"):
        assert "--index-dir" in helps[name] and "--top-k" in helps[name]
    for name in ("prepare_training_data", "train_two_tower", "hard_negative_mining", "reindex_with_trained_model",
                 "evaluate_trained_model", "export_model", "sample_catalog"):
        assert "--overwrite" in helps[name], name
    for name, h in helps.items():
        assert "--quiet" in h and "--version" in h, name


def test_quiet_turns_off_progress_bars_and_info_logs():
    seen = {}

    def main(args):
        seen["quiet"] = cli.quiet()
        seen["disabled"] = cli.progress(range(3)).disable
        seen["info"] = utils.log.isEnabledFor(20)

    assert cli.run_cli(main, argparse.Namespace(quiet=True, log_level="INFO")) == 0
    assert seen == {"quiet": True, "disabled": True, "info": False}
    assert cli.run_cli(main, argparse.Namespace(quiet=False, log_level="INFO")) == 0
    assert seen == {"quiet": False, "disabled": False, "info": True}


def test_tensorboard_flag_names_its_extra_requirements_file_when_missing(monkeypatch, tmp_path):
    import importlib.util

    import train_two_tower as tt
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    args = tt.parse_args(["--stage", "1", "--tensorboard", str(tmp_path / "tb")])
    with pytest.raises(UserError, match=r"pip install -r requirements-tensorboard\.txt"):
        tt.require_tensorboard(args)
    assert (ROOT / "requirements-tensorboard.txt").read_text().count("tensorboard") >= 1
    assert not (tmp_path / "tb").exists()


# ------------------------------------------------------------------------------------------------
# One overwrite policy: a finished artifact is replaced only with --overwrite
# ------------------------------------------------------------------------------------------------
def test_sample_catalog_and_prepare_refuse_to_replace_without_overwrite(tmp_path, tiny_raw):
    import prepare_training_data as prep
    import sample_catalog as sc
    raw = tmp_path / "raw"
    sc.main(sc.parse_args(["--size", "tiny", "--raw-dir", str(raw)]))
    before = {f.name: f.stat().st_mtime_ns for f in raw.iterdir()}
    with pytest.raises(UserError, match=r"shopping_queries_dataset_\w+\.parquet exists; pass --overwrite"):
        sc.main(sc.parse_args(["--size", "tiny", "--raw-dir", str(raw)]))
    assert {f.name: f.stat().st_mtime_ns for f in raw.iterdir()} == before
    sc.main(sc.parse_args(["--size", "tiny", "--raw-dir", str(raw), "--overwrite"]))

    data = tmp_path / "data"
    prep.main(prep.parse_args(["--raw-dir", str(raw), "--data-dir", str(data)]))
    stats = (data / "prepare_stats.json").read_bytes()
    with pytest.raises(UserError, match=r"products_clean\.parquet exists \(and 4 more .*\); pass --overwrite"):
        prep.main(prep.parse_args(["--raw-dir", str(raw), "--data-dir", str(data), "--neg-ratio", "1"]))
    assert (data / "prepare_stats.json").read_bytes() == stats
    with pytest.raises(UserError, match="pass --overwrite"):  # --make-sample onto existing raw files
        prep.main(prep.parse_args(["--raw-dir", str(raw), "--data-dir", str(tmp_path / "d2"), "--make-sample", "tiny"]))
    prep.main(prep.parse_args(["--raw-dir", str(raw), "--data-dir", str(data), "--neg-ratio", "1", "--overwrite"]))
    assert (data / "prepare_stats.json").read_bytes() != stats


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s != "workflow_state"] + BENCH)
def test_every_script_runs_main_through_run_cli(name):
    """A bad input (UserError) becomes one line and exit 2, an interrupt exit 130, in every script and
    benchmark alike: their `__main__` guard hands main to cli.run_cli. (workflow_state's exit status is
    its verdict for run_workflow.sh, so it is not in this list.)"""
    import ast
    path = ROOT / ("bench" if name in BENCH else "") / f"{name}.py"
    guards = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.If)
              and ast.unparse(n.test) in ("__name__ == '__main__'", '__name__ == "__main__"')]
    assert len(guards) == 1, f"{path.name}: one __main__ guard"
    assert ast.unparse(guards[0].body[-1]) == "raise SystemExit(run_cli(main, parse_args()))", path.name
