"""Every numeric option is range-checked at parse time: one line naming the option, exit status 2
(argparse's), before any work; e.g. --batch-size -1 used to build an index from uninitialised memory."""
import importlib
import subprocess
import sys

import pytest

from conftest import ROOT

CASES = [  # (script, flag, bad value, words expected in the one-line error)
    ("reindex_with_trained_model", "--batch-size", "-1", "must be an integer >= 1"),
    ("reindex_with_trained_model", "--hnsw-m", "1", "must be an integer >= 2"),
    ("reindex_with_trained_model", "--ef-search", "0", "must be an integer >= 1"),
    ("hard_negative_mining", "--batch-size", "0", "must be an integer >= 1"),
    ("hard_negative_mining", "--top-k", "0", "must be an integer >= 1"),
    ("hard_negative_mining", "--margin", "1", "must be in [0.0, 1.0)"),
    ("hard_negative_mining", "--skip-top", "-3", "must be an integer >= 0"),
    ("evaluate_trained_model", "--top-k", "0", "must be an integer >= 1"),
    ("evaluate_trained_model", "--bootstrap", "x", "expected an integer"),
    ("demo_trained_model", "--k", "0", "must be an integer in [1, 100]"),
    ("demo_trained_model", "--k", "101", "must be an integer in [1, 100]"),
    ("train_two_tower", "--grad-accum", "0", "must be an integer >= 1"),
    ("train_two_tower", "--temperature", "0", "must be in (0.0, inf]"),
    ("train_two_tower", "--lr", "-1e-5", "must be in [0.0, inf]"),
    ("train_two_tower", "--lr", "nan", "must be in [0.0, inf]"),
    ("train_two_tower", "--batch-size", "1", "must be an integer >= 2"),
    ("train_two_tower", "--warmup", "1.5", "must be in [0.0, 1.0)"),
    ("train_two_tower", "--query-max-len", "1", "must be an integer >= 2"),
    ("train_two_tower", "--negatives", "-1", "must be an integer >= 0"),
    ("prepare_training_data", "--neg-ratio", "-1", "must be an integer >= 0"),
    ("prepare_training_data", "--val-fraction", "1", "must be in [0.0, 1.0)"),
    ("prepare_training_data", "--resplit-queries", "0", "must be in (0.0, 1.0)"),
    ("sample_catalog", "--n-products", "0", "must be an integer >= 1"),
]
REQUIRED = {"train_two_tower": ["--stage", "1"]}


@pytest.mark.parametrize("script,flag,value,words", CASES)
def test_bad_number_is_one_line_exit_2(script, flag, value, words, capsys):
    mod = importlib.import_module(script)
    with pytest.raises(SystemExit) as e:
        mod.parse_args([*REQUIRED.get(script, []), f"{flag}={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and words in err, err


def test_bad_number_from_the_command_line_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "reindex_with_trained_model.py"), "--baseline", "--batch-size",
                        "-1", "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--batch-size" in r.stderr
    assert list(tmp_path.iterdir()) == []
