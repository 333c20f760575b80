"""export_model.py: a sentence-transformers directory that embeds exactly as the towers do."""
import json

import numpy as np
import pytest
import torch

import export_model as ex
import train_two_tower as tt
from two_tower_model import TwoTowerModel
from utils import UserError

QUERIES = ["usb c cable", "red running shoes size 10", "bathroom fan without light",
           "a rather long query about a waterproof hiking backpack with many pockets and a rain cover included"]
PRODUCTS = ["Anker USB-C Cable 6ft, braided", "Nike Running Shoes, Red, Men's size 10",
            "Broan Bath Fan, 80 CFM, no light", "Osprey Daylite Plus 20L hiking daypack with rain cover " * 6]


def _trained(data_dir, tmp_path, enc, *flags):
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(["--data-dir", str(data_dir), "--checkpoint-dir", str(ck), "--base-model", str(enc),
                           "--batch-size", "8", "--val-corpus-size", "50", "--val-batches", "1", "--stage", "1",
                           "--max-steps", "2", "--epochs", "1", "--lr", "1e-3", *flags]))
    return ck / "stage1.pt"


def _cos_rows(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("flags,router", [
    ((), True),                                                     # shared, query 32 / product 128 tokens
    (("--query-max-len", "64", "--product-max-len", "64"), False),  # shared, one length: a plain model
    (("--tower-sharing", "separate", "--projection-dim", "16",
      "--query-prompt", "query: ", "--product-prompt", "passage: "), True),
])
def test_exported_model_reproduces_the_towers(data_dir, tmp_path, tiny_encoder_dir, flags, router):
    from sentence_transformers import SentenceTransformer
    ck = _trained(data_dir, tmp_path, tiny_encoder_dir, *flags)
    out = tmp_path / "export"
    ex.main(ex.parse_args(["--checkpoint", str(ck), "--output", str(out), "--data-dir", str(data_dir)]))
    meta = json.loads((out / "ttsn_export.json").read_text())
    assert meta["router"] is router and (out / "router_config.json").is_file() is router
    model = TwoTowerModel.from_pretrained(ck)
    st = SentenceTransformer(str(out), device="cpu")  # no import of this project's model code needed
    model.encode_dtype = torch.float32  # sentence-transformers encodes in fp32; compare like with like
    q_ref, p_ref = model.encode_queries(QUERIES), model.encode_products(PRODUCTS)
    q, p = st.encode_query(QUERIES), st.encode_document(PRODUCTS)
    assert q.shape == q_ref.shape and p.shape == p_ref.shape
    assert _cos_rows(q, q_ref).min() >= 0.9999 and _cos_rows(p, p_ref).min() >= 0.9999
    if not router:  # a plain model: encode() is the same function for both sides
        assert _cos_rows(st.encode(QUERIES), q_ref).min() >= 0.9999
    if "--tower-sharing" in flags:  # the towers differ, so the routes must too
        assert _cos_rows(st.encode_document(QUERIES), q_ref).min() < 0.999
    card = (out / "README.md").read_text()
    assert str(tiny_encoder_dir) in card and model.fingerprint() in card


def test_export_refuses_to_replace_and_leaves_nothing_half_written(data_dir, tmp_path, tiny_encoder_dir):
    ck = _trained(data_dir, tmp_path, tiny_encoder_dir)
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        ex.main(ex.parse_args(["--checkpoint", str(ck), "--output", str(out)]))
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="checkpoint not found"):
        ex.main(ex.parse_args(["--checkpoint", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "x")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "data", "export"]  # no temporary directory left
    ex.main(ex.parse_args(["--checkpoint", str(ck), "--output", str(out), "--overwrite"]))
    assert not (out / "keep.txt").exists() and (out / "modules.json").is_file()


# ---------------------------------------------------------------------------------------------
# --format onnx
# ---------------------------------------------------------------------------------------------
def _texts_of_every_length(tok, max_len):
    """Texts of 1 token up to past max_len tokens (special tokens included)."""
    words = ("cable", "usb", "braided", "nylon", "fast", "charging", "white", "ft")
    out = []
    for n in sorted({1, 2, 3, max_len // 2, max_len - 2, max_len - 1, max_len, max_len + 5, 3 * max_len}):
        text = " ".join(words[i % len(words)] for i in range(max(n - 2, 1)))
        out.append(text if n > 1 else "")
    return out


@pytest.mark.parametrize("flags,graphs,tokenizers", [
    ((), ["model.onnx"], ["query_tokenizer.json", "tokenizer.json"]),          # shared, 32 / 128 tokens
    (("--query-max-len", "40", "--product-max-len", "40"), ["model.onnx"], ["tokenizer.json"]),
    (("--tower-sharing", "separate", "--projection-dim", "16", "--query-prompt", "query: ",
      "--product-prompt", "passage: "), ["product.onnx", "query.onnx"], ["query_tokenizer.json", "tokenizer.json"]),
])
def test_onnx_export_reproduces_the_towers(data_dir, tmp_path, tiny_encoder_dir, flags, graphs, tokenizers):
    import onnx_export as ox
    ck = _trained(data_dir, tmp_path, tiny_encoder_dir, *flags)
    out = tmp_path / "onnx"
    ex.main(ex.parse_args(["--checkpoint", str(ck), "--output", str(out), "--format", "onnx"]))
    meta = json.loads((out / "ttsn_onnx.json").read_text())
    assert sorted(p.name for p in out.glob("*.onnx")) == graphs and sorted(p.name for p in out.glob("*tokenizer.json")) == tokenizers
    assert set(meta["files"]) == set(graphs) | set(tokenizers) and meta["outputs"] == ["token_embeddings", "sentence_embedding"]
    model = TwoTowerModel.from_pretrained(ck)
    model.encode_dtype = torch.float32
    for side in ("query", "product"):
        spec = meta["towers"][side]
        assert spec["max_length"] == getattr(model.config, f"{side}_max_len")
        assert spec["prompt"] == getattr(model.config, f"{side}_prompt")
        texts = _texts_of_every_length(model.tokenizer, spec["max_length"])
        ref = model.encode_queries(texts) if side == "query" else model.encode_products(texts)
        many = ox.encode_with_tokenizer_json(out / spec["model"], out / spec["tokenizer"], texts, spec["prompt"])
        assert _cos_rows(many, ref).min() >= 0.9999, side  # one padded batch of every length
        for i, t in enumerate(texts):  # batch size 1, every sequence length on its own (dynamic axes)
            one = ox.encode_with_tokenizer_json(out / spec["model"], out / spec["tokenizer"], [t], spec["prompt"])
            assert _cos_rows(one, ref[i:i + 1]).min() >= 0.9999, (side, i)
    if "--tower-sharing" in flags:  # the graphs differ as the towers do
        q = ox.encode_with_tokenizer_json(out / "product.onnx", out / "tokenizer.json", QUERIES)
        assert _cos_rows(q, model.encode_queries(QUERIES)).min() < 0.999
    # the token embeddings are the encoder's states: an engine that mean-pools them gets the embedding
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out / graphs[0]), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([[101, 2000, 3000, 102], [101, 2000, 102, 0]]),
            "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]])}
    if "token_type_ids" in meta["inputs"]:
        feed["token_type_ids"] = np.zeros((2, 4), np.int64)
    tokens, pooled = sess.run(None, feed)
    assert tokens.shape[:2] == (2, 4) and pooled.shape == (2, model.config.embedding_dim)
    if not model.config.projection_dim:
        m = feed["attention_mask"][..., None]
        mean = (tokens * m).sum(1) / m.sum(1)
        np.testing.assert_allclose(mean / np.linalg.norm(mean, axis=1, keepdims=True), pooled, atol=1e-5)
    assert meta["engine_pooling_matches"] is (not model.config.projection_dim)


def test_onnx_export_refuses_to_replace_and_int8_is_not_an_option(data_dir, tmp_path, tiny_encoder_dir):
    ck = _trained(data_dir, tmp_path, tiny_encoder_dir)
    ex.main(ex.parse_args(["--checkpoint", str(ck), "--output", str(tmp_path / "f32"), "--format", "onnx"]))
    with pytest.raises(UserError, match="--overwrite"):
        ex.main(ex.parse_args(["--checkpoint", str(ck), "--output", str(tmp_path / "f32"), "--format", "onnx"]))
    with pytest.raises(SystemExit):  # measured and not offered (docs/benchmarks.md)
        ex.parse_args(["--checkpoint", str(ck), "--output", str(tmp_path / "x"), "--format", "onnx", "--quantize", "int8"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "data", "f32"]


def test_int8_graph_of_the_benchmark_is_really_quantised(tiny_model, tmp_path):
    """bench_encode.py's onnx_int8 row: the graph has integer matmuls and still embeds roughly alike."""
    import onnx

    import onnx_export as ox
    from backends import OnnxTower
    ox.export_tower(tiny_model.product_tower, tiny_model.tokenizer, tmp_path / "f.onnx")
    ox.quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    tiny_model.encode_dtype = torch.float32
    ref = tiny_model.encode_products(PRODUCTS)
    assert _cos_rows(OnnxTower(tiny_model).encode(PRODUCTS), ref).min() >= 0.9999
    assert _cos_rows(OnnxTower(tiny_model, quantize="int8").encode(PRODUCTS), ref).min() > 0.5


def test_readme_onnx_snippet_runs(data_dir, tmp_path, tiny_encoder_dir, monkeypatch):
    """The README's onnxruntime snippet, run as written against an export (its path swapped in)."""
    import re
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    snippet = next(b for b in blocks if "onnxruntime" in b and "ttsn_onnx.json" in b)
    ck = _trained(data_dir, tmp_path, tiny_encoder_dir)
    out = tmp_path / "models" / "ttsn-onnx"
    ex.main(ex.parse_args(["--checkpoint", str(ck), "--output", str(out), "--format", "onnx"]))
    monkeypatch.chdir(tmp_path)  # the snippet reads models/ttsn-onnx
    ns: dict = {}
    exec(compile(snippet, "README.md", "exec"), ns)
    model = TwoTowerModel.from_pretrained(ck)
    model.encode_dtype = torch.float32
    q = model.encode_queries(["usb c cable"])
    p = model.encode_products(["Anker USB-C Cable 6ft, braided", "Broan Bath Fan, 80 CFM, no light"])
    np.testing.assert_allclose(ns["scores"], q @ p.T, atol=1e-4)
