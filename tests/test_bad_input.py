"""Bad input, table-driven: for each script and each bad input, the exit status, the first words of
the one-line error, and that no output file was created or changed (outputs are written under a
temporary name, and writability is checked before the heavy work)."""
import hashlib
import importlib
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cli import run_cli
from paths import EXAMPLES_FILE, PRODUCTS_FILE
from utils import UserError


def _snapshot(*dirs):
    """{path: sha256} of every file under dirs (the test's 'nothing changed' witness)."""
    out = {}
    for d in dirs:
        for f in sorted(Path(d).rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[:3000])


def _not_a_dir(tmp: Path) -> Path:
    """A path that cannot be created as a directory (its parent is a file): unwritable even for root."""
    f = tmp / "a_file"
    f.write_text("x")
    return f / "out"


def _raw(tiny_raw: Path, tmp: Path, edit_examples=None, edit_products=None) -> Path:
    d = tmp / "raw_bad"
    d.mkdir(exist_ok=True)
    ex = pd.read_parquet(tiny_raw / EXAMPLES_FILE)
    pr = pd.read_parquet(tiny_raw / PRODUCTS_FILE)
    (edit_examples(ex) if edit_examples else ex).to_parquet(d / EXAMPLES_FILE)
    (edit_products(pr) if edit_products else pr).to_parquet(d / PRODUCTS_FILE)
    return d


def _empty_some(frac):
    def edit(ex):
        ex = ex.copy()
        n = int(len(ex) * frac)
        ex.loc[ex.index[:n], "query"] = "   "
        return ex
    return edit


# (id, script, argv(ctx), setup(ctx) or None, exit code, first words of the error)
# ctx: data (prepared tiny data, private copy), raw (tiny raw files), tmp, out (a fresh output dir)
CASES = [
    ("reindex-corrupt-catalog", "reindex_with_trained_model",
     lambda c: ["--baseline", "--data-dir", c["data"], "--index-dir", c["out"]],
     lambda c: _truncate(c["data"] / "products_clean.parquet"), 2, "cannot read"),
    ("reindex-unwritable-index-dir", "reindex_with_trained_model",
     lambda c: ["--baseline", "--data-dir", c["data"], "--index-dir", _not_a_dir(c["tmp"])], None, 2,
     "cannot write to"),
    ("mining-corrupt-catalog", "hard_negative_mining",
     lambda c: ["--baseline", "--data-dir", c["data"], "--output", c["out"] / "hn.parquet"],
     lambda c: _truncate(c["data"] / "products_clean.parquet"), 2, "cannot read"),
    ("mining-unwritable-output", "hard_negative_mining",
     lambda c: ["--baseline", "--data-dir", c["data"], "--output", _not_a_dir(c["tmp"]) / "hn.parquet"], None, 2,
     "cannot write to"),
    ("mining-pairs-without-column", "hard_negative_mining",
     lambda c: ["--baseline", "--data-dir", c["data"], "--output", c["out"] / "hn.parquet"],
     lambda c: pd.read_parquet(c["data"] / "training_pairs.parquet").drop(columns=["query"]).to_parquet(
         c["data"] / "training_pairs.parquet"), 2, str(Path("training_pairs.parquet")) + " lacks column(s) query"),
    ("train-corrupt-pairs", "train_two_tower",
     lambda c: ["--stage", "1", "--data-dir", c["data"], "--checkpoint-dir", c["out"], "--base-model", c["enc"]],
     lambda c: _truncate(c["data"] / "training_pairs.parquet"), 2, "cannot read"),
    ("train-unwritable-checkpoint-dir", "train_two_tower",
     lambda c: ["--stage", "1", "--data-dir", c["data"], "--checkpoint-dir", _not_a_dir(c["tmp"]),
                "--base-model", c["enc"]], None, 2, "cannot write to"),
    ("train-stage2-without-stage1", "train_two_tower",
     lambda c: ["--stage", "2", "--data-dir", c["data"], "--checkpoint-dir", c["out"], "--base-model", c["enc"]],
     None, 2, "stage 2 starts from the stage-1 model"),
    ("evaluate-corrupt-ground-truth", "evaluate_trained_model",
     lambda c: ["--data-dir", c["data"], "--out-dir", c["out"]],
     lambda c: _truncate(c["data"] / "ground_truth.parquet"), 2, "cannot read"),
    ("evaluate-unwritable-out-dir", "evaluate_trained_model",
     lambda c: ["--data-dir", c["data"], "--out-dir", _not_a_dir(c["tmp"])], None, 2, "cannot write to"),
    ("evaluate-missing-checkpoint", "evaluate_trained_model",
     lambda c: ["--data-dir", c["data"], "--out-dir", c["out"], "--checkpoint", c["tmp"] / "nope.pt"], None, 2,
     "checkpoint not found"),
    ("prepare-examples-without-label", "prepare_training_data",
     lambda c: ["--raw-dir", _raw(c["raw"], c["tmp"], edit_examples=lambda e: e.drop(columns=["esci_label"])),
                "--data-dir", c["out"]], None, 2, "lacks column(s) esci_label"),
    ("prepare-corrupt-products", "prepare_training_data",
     lambda c: ["--raw-dir", c["rawcopy"], "--data-dir", c["out"]],
     lambda c: _truncate(c["rawcopy"] / PRODUCTS_FILE), 2, "cannot read"),
    ("prepare-all-queries-empty", "prepare_training_data",
     lambda c: ["--raw-dir", _raw(c["raw"], c["tmp"], edit_examples=_empty_some(1.0)), "--data-dir", c["out"]],
     None, 2, "the query column is empty"),
    ("prepare-60pct-queries-empty", "prepare_training_data",
     lambda c: ["--raw-dir", _raw(c["raw"], c["tmp"], edit_examples=_empty_some(0.6)), "--data-dir", c["out"]],
     None, 2, "unusable examples (empty query"),
    ("prepare-unwritable-data-dir", "prepare_training_data",
     lambda c: ["--raw-dir", c["raw"], "--data-dir", _not_a_dir(c["tmp"])], None, 2, "cannot write to"),
    ("export-corrupt-checkpoint", "export_model",
     lambda c: ["--checkpoint", c["tmp"] / "bad.pt", "--output", c["out"] / "model"],
     lambda c: (c["tmp"] / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip"), 2, "is not a readable checkpoint"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_nonzero_exit_and_changes_nothing(case, data_dir, tiny_raw, tiny_encoder_dir,
                                                                 tmp_path, caplog):
    _, script, argv, setup, code, words = case
    rawcopy = tmp_path / "rawcopy"
    shutil.copytree(tiny_raw, rawcopy)
    ctx = {"data": data_dir, "raw": tiny_raw, "rawcopy": rawcopy, "tmp": tmp_path, "out": tmp_path / "out",
           "enc": tiny_encoder_dir}
    if setup:
        setup(ctx)
    before = _snapshot(data_dir, rawcopy)
    mod = importlib.import_module(script)
    caplog.set_level(logging.INFO)
    rc = run_cli(mod.main, mod.parse_args([str(a) for a in argv(ctx)]))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == code, errors
    assert len(errors) == 1 and "\n" not in errors[0] and words in errors[0], errors
    assert _snapshot(data_dir, rawcopy) == before  # inputs untouched
    out = tmp_path / "out"
    assert not out.exists() or not [f for f in out.rglob("*") if f.is_file() and not f.name.startswith(".")], \
        sorted(out.rglob("*"))  # no output was written


def test_demo_stdin_invalid_utf8_is_one_line_naming_the_line():
    import io

    import demo_trained_model as demo
    lines = demo.stdin_lines(io.BytesIO("usb cable\n".encode() + b"caf\xe9 latte\n"))
    assert next(lines) == "usb cable\n"
    with pytest.raises(UserError, match=r"stdin line 2 is not valid UTF-8 \(byte 0xe9 at position 3\)"):
        next(lines)
