"""bench/bench_attention.py: what dropout and the CPU attention kernel cost a training step."""
import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_attention as ba  # noqa: E402


def test_shapes_arg_parses_and_refuses():
    assert ba.shapes_arg("70x9,1x2") == [(70, 9), (1, 2)]
    for bad in ("70", "70x0", "axb", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            ba.shapes_arg(bad)


def test_a_tiny_run_times_every_variant_and_zeroes_every_dropout_layer(tmp_path, tiny_encoder_dir):
    out = tmp_path / "attention.json"
    res = ba.main(ba.parse_args(["--base-model", str(tiny_encoder_dir), "--groups", "4x5,2x9",
                                 "--infer-shapes", "3x4", "--steps", "1", "--warmup", "0", "--rounds", "2",
                                 "--out", str(out)]))
    assert json.loads(out.read_text()) == res
    assert res["tokens"] == 4 * 5 + 2 * 9 and res["own_dropout"] == pytest.approx(0.1)
    assert res["dropout_layers"] == 2 * 3 + 1  # the tiny 2-layer BERT: embeddings + 3 per layer
    assert res["fast_dropout_layers"] == res["dropout_layers"]
    assert set(res["train_step_ms"]) == {"own_dropout", "own_dropout_fast_kernel", "dropout_0", "dropout_0_math_kernel"}
    assert all(v > 0 for v in res["train_step_ms"].values())
    assert all(len(t) == 2 for t in res["train_step_ms_per_round"].values())
    assert [(r["batch"], r["tokens"]) for r in res["eval_forward_ms"]] == [(3, 4)]
    assert res["eval_forward_ms"][0]["default_kernel"] > 0 and res["eval_forward_ms"][0]["math_kernel"] > 0
