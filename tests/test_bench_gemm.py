"""bench/bench_gemm.py: the matrix-multiply ceiling that CPU speed figures are put next to."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_gemm as bg  # noqa: E402


def test_gflops_counts_two_operations_per_multiply_add():
    assert bg.gflops(1000, 1000, 1000, 1.0) == pytest.approx(2.0)
    assert bg.gflops(64, 384, 1536, 0.5) == pytest.approx(2 * 64 * 384 * 1536 / 0.5 / 1e9)


def test_the_shapes_are_minilm_s_layer_products():
    assert {(k, n) for _, k, n in bg.MINILM_SHAPES} == {(384, 1152), (384, 384), (384, 1536), (1536, 384)}


def test_a_tiny_run_writes_every_dtype_and_shape_with_the_cpu_flags(tmp_path):
    out = tmp_path / "gemm.json"
    res = bg.main(bg.parse_args(["--tokens", "16", "--square", "32", "--reps", "2", "--min-seconds", "0.001",
                                 "--out", str(out)]))
    assert json.loads(out.read_text()) == res
    assert {(r["dtype"], r["shape"]) for r in res["rows"]} == {
        (d, s) for d in ("float32", "bfloat16") for s in ("qkv", "attn_out", "ffn_up", "ffn_down", "square")}
    assert all(r["M"] == 16 for r in res["rows"] if r["shape"] != "square")
    assert all(0 < r["gflops_median"] <= r["gflops_best"] for r in res["rows"])
    assert res["bf16_over_fp32"] == pytest.approx(res["minilm_gflops_bfloat16"] / res["minilm_gflops_float32"],
                                                  abs=0.01)
    assert "avx2" in res["cpu"] or res["cpu"] == {}
