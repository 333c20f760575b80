"""Catalog-encode backends (backends.py): the choice rule, and OpenVINO's product embeddings equal
the torch tower's (fp32 exactly to float tolerance; bf16 within the benchmark's faithfulness bound)."""
import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

import backends as B
from embeddings import catalog_embeddings
from utils import UserError, bf16_supported

TEXTS = ["usb c charging cable 6 ft braided nylon", "aa batteries 24 pack alkaline",
         "wireless mouse with silent clicks and usb receiver for laptop computer, black", "x"] * 5


def test_backend_choice_rule(monkeypatch):
    cpu = torch.device("cpu")
    assert B.resolve_backend("torch", cpu) == "torch"
    with pytest.raises(UserError, match="not one of"):
        B.resolve_backend("tensorrt", cpu)
    assert B.resolve_backend("onnx", cpu) == "onnx" and B.backend_key("onnx", cpu) == "onnx-f32"
    with pytest.raises(UserError, match="CPU only"):
        B.resolve_backend("onnx", torch.device("cuda"))
    with pytest.raises(UserError, match="CPU only"):
        B.resolve_backend("openvino", torch.device("cuda"))
    assert B.resolve_backend("auto", torch.device("cuda")) == "torch"
    monkeypatch.setattr(B, "openvino_available", lambda: True)
    monkeypatch.setattr(B, "bf16_supported", lambda d: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert B.resolve_backend("auto", cpu) == "openvino"  # AVX2-only: OpenVINO fp32 beats torch (measured)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert B.resolve_backend("auto", cpu) == "torch"  # no AVX2 (e.g. ARM): not measured, torch stays
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(B, "bf16_supported", lambda d: True)
    assert B.resolve_backend("auto", cpu) == "openvino"
    monkeypatch.setattr(B, "openvino_available", lambda: False)
    assert B.resolve_backend("auto", cpu) == "torch"
    with pytest.raises(UserError, match="needs the openvino package"):
        B.resolve_backend("openvino", cpu)
    monkeypatch.setattr(B, "onnx_available", lambda: False)
    with pytest.raises(UserError, match="needs onnxruntime"):
        B.resolve_backend("onnx", cpu)


needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")


@needs_openvino
def test_openvino_fp32_equals_the_torch_tower(tiny_model):
    tiny_model.encode_dtype = torch.float32
    ref = tiny_model.encode_products(TEXTS)
    got = B.OpenVINOTower(tiny_model, precision="f32").encode(TEXTS, batch_size=3)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert (got * ref).sum(1).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


@needs_openvino
@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no native bf16 on this CPU")
def test_openvino_bf16_is_faithful(tiny_model):
    tiny_model.encode_dtype = torch.float32
    ref = tiny_model.encode_products(TEXTS)
    got = B.OpenVINOTower(tiny_model, precision="bf16").encode(TEXTS)
    assert (got * ref).sum(1).min() >= 0.999


@needs_openvino
def test_each_backend_has_its_own_cache_entry(tiny_model, tmp_path):
    products = pd.DataFrame({"product_id": [f"p{i}" for i in range(len(TEXTS))], "product_text": TEXTS})
    a, meta_a = catalog_embeddings(tiny_model, products, tmp_path, show_progress=False, backend="torch")
    b, meta_b = catalog_embeddings(tiny_model, products, tmp_path, show_progress=False, backend="openvino")
    dirs = sorted(p.name for p in (tmp_path / "embeddings_cache").iterdir())
    fp = tiny_model.fingerprint()
    assert dirs[0] == fp and dirs[1].startswith(fp + "-openvino-") and len(dirs) == 2
    assert meta_a["backend"] == "torch" and meta_b["backend"].startswith("openvino-")
    assert (np.asarray(a) * np.asarray(b)).sum(1).min() >= 0.999


@needs_openvino
def test_mining_then_reindex_with_the_default_backend_encode_once(data_dir, tiny_encoder_dir, monkeypatch):
    """--backend auto picks one concrete backend for both phases, so the cache is shared."""
    import hard_negative_mining as hnm
    import reindex_with_trained_model as rx
    calls = []
    orig = B.product_encoder
    monkeypatch.setattr(B, "product_encoder", lambda m, b: calls.append(b) or orig(m, b))
    common = ["--baseline", "--base-model", str(tiny_encoder_dir), "--data-dir", str(data_dir)]
    hnm.main(hnm.parse_args(common + ["--output", str(data_dir / "hn.parquet")]))
    meta = rx.main(rx.parse_args(common + ["--no-hnsw", "--report-queries", "0"]))
    want = B.resolve_backend("auto", torch.device("cpu"))
    assert calls == [want]  # one encode, by the backend auto chose on this CPU
    assert meta["encode_backend"] == (B.backend_key(want, torch.device("cpu")) or "torch")
    assert meta["model_fingerprint"] == meta["model"]["fingerprint"]


def test_onnx_backend_encodes_the_catalog_like_torch(tiny_model, data_dir):
    """--backend onnx: the exported graph in ONNX Runtime, cached under its own key."""
    from fileio import load_catalog
    products = load_catalog(data_dir)
    tiny_model.encode_dtype = torch.float32
    ref, _ = catalog_embeddings(tiny_model, products, data_dir, show_progress=False, backend="torch")
    got, meta = catalog_embeddings(tiny_model, products, data_dir, show_progress=False, backend="onnx")
    assert meta["backend"] == "onnx-f32" and len(list((data_dir / "embeddings_cache").iterdir())) == 2
    cos = (np.asarray(got) * np.asarray(ref)).sum(1)
    assert cos.min() >= 0.9999
