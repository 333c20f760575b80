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
