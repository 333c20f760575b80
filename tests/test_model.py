import numpy as np
import pytest
import torch

from two_tower_model import TwoTowerModel, load_checkpoint_file
from utils import UserError

Q = ["bathroom fan without light", "aa batteries 24 pack", "red running shoes size 10", "!yoga mat"]
P = ["Broan-NuTone Bathroom Exhaust Fan, 80 CFM, No Light", "Duracell AA Batteries (24 Count)",
     "Nike Running Shoes, Size 10, Red. Breathable mesh; rubber outsole with durable traction", "Gaiam Yoga Mat"]


def test_encode_shapes_norms_and_order(tiny_model):
    q = tiny_model.encode_queries(Q)
    p = tiny_model.encode_products(P, batch_size=2)
    assert q.shape == (4, 32) and p.dtype == np.float32
    assert np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-5)
    # length sorting must not permute results: one-by-one equals batched
    single = np.stack([tiny_model.encode_products([t])[0] for t in P])
    assert np.allclose(single, p, atol=1e-5)
    assert tiny_model.encode_queries([]).shape == (0, 32)


def test_forward_scores_match_encode(tiny_model):
    s = tiny_model(Q, P)
    assert s.shape == (4,) and s.requires_grad
    e = (tiny_model.encode_queries(Q) * tiny_model.encode_products(P)).sum(1)
    assert np.allclose(s.detach().numpy(), e, atol=1e-5)


def test_max_lengths_are_per_side(tiny_encoder_dir):
    m = TwoTowerModel.from_pretrained(str(tiny_encoder_dir), query_max_len=4, product_max_len=16)
    assert m.tokenize(["a b c d e f g h"], "query")["input_ids"].shape[1] == 4
    assert m.tokenize(["a b c d e f g h"], "product")["input_ids"].shape[1] == 10


@pytest.mark.parametrize("sharing,proj", [("shared", 0), ("separate", 16)])
def test_checkpoint_roundtrip_pt_and_dir(tiny_encoder_dir, tmp_path, sharing, proj):
    m = TwoTowerModel.from_pretrained(str(tiny_encoder_dir), tower_sharing=sharing, projection_dim=proj)
    with torch.no_grad():  # make the towers differ from the base model
        for prm in m.product_tower.parameters():
            prm.add_(0.01)
    ref_q, ref_p = m.encode_queries(Q), m.encode_products(P)
    m.save(tmp_path / "m.pt")
    m.save(tmp_path / "mdir")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # no pickle needed
    assert raw["config"]["tower_sharing"] == sharing and "tokenizer.json" in raw["tokenizer_files"]
    for src in (tmp_path / "m.pt", tmp_path / "mdir"):
        m2 = TwoTowerModel.from_pretrained(src)
        assert m2.config.embedding_dim == (proj or 32)
        assert np.allclose(m2.encode_queries(Q), ref_q, atol=1e-6)
        assert np.allclose(m2.encode_products(P), ref_p, atol=1e-6)


def test_fingerprint_is_the_weights_not_where_they_are_installed(tiny_encoder_dir, tmp_path):
    """The same HF model directory in two places (two virtual environments' site-packages) is one
    model: its embedding cache and indices must serve both; a changed weight is another model."""
    import shutil
    copy = shutil.copytree(tiny_encoder_dir, tmp_path / "elsewhere" / "model")
    a, b = TwoTowerModel.from_pretrained(str(tiny_encoder_dir)), TwoTowerModel.from_pretrained(str(copy))
    assert a.config.encoder_config["_name_or_path"] != b.config.encoder_config["_name_or_path"]
    assert a.fingerprint() == b.fingerprint()
    b.save(tmp_path / "b.pt")  # the fingerprint stored at save time is the same one
    assert TwoTowerModel.from_pretrained(tmp_path / "b.pt").fingerprint() == a.fingerprint()
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert b.fingerprint(refresh=True) != a.fingerprint()


def test_refuses_other_base_model_or_dimension(tiny_model, tiny_encoder_dir, tmp_path):
    tiny_model.save(tmp_path / "m.pt")
    with pytest.raises(UserError, match="base model"):
        TwoTowerModel.from_pretrained(tmp_path / "m.pt", expect_base_model="sentence-transformers/all-mpnet-base-v2")
    with pytest.raises(UserError, match="384"):
        TwoTowerModel.from_pretrained(tmp_path / "m.pt", expect_dim=384)
    TwoTowerModel.from_pretrained(tmp_path / "m.pt", expect_base_model=str(tiny_encoder_dir), expect_dim=32)


def test_corrupt_truncated_and_foreign_checkpoints(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        TwoTowerModel.from_pretrained(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a two-tower checkpoint"):
        load_checkpoint_file(tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not found"):
        TwoTowerModel.from_pretrained(tmp_path / "missing.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["config"]["projection_dim"] = 8  # config no longer matches the weights
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="do not fit"):
        TwoTowerModel.from_pretrained(tmp_path / "mismatch.pt")


def test_pickle_payload_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"config": {}, "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint_file(tmp_path / "evil.pt")


def test_real_minilm_matches_sentence_transformers():
    """The untrained two-tower model is exactly the pretrained all-MiniLM-L6-v2."""
    from sentence_transformers import SentenceTransformer

    from utils import resolve_model_path
    m = TwoTowerModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    m.encode_dtype = torch.float32
    st = SentenceTransformer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    ours = m.encode_products(P)
    ref = st.encode(P, normalize_embeddings=True)
    assert ours.shape == (4, 384)
    assert (ours * ref).sum(1).min() > 0.9999
    assert (m.encode_queries(Q) * st.encode(Q, normalize_embeddings=True)).sum(1).min() > 0.9999


def test_checkpoint_progress_and_from_payload(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m.pt", extra={"progress": {"stage": 2, "epoch": 3}})
    m = TwoTowerModel.from_pretrained(tmp_path / "m.pt")
    assert m.progress == {"stage": 2, "epoch": 3} and tiny_model.progress == {}
    m2 = TwoTowerModel.from_payload(torch.load(tmp_path / "m.pt", weights_only=True), str(tmp_path / "m.pt"))
    assert np.allclose(m2.encode_queries(Q), m.encode_queries(Q), atol=1e-6)


@pytest.mark.parametrize("name", ["../escaped.txt", "ABSOLUTE", "vocab.txt/../../escaped.txt", "tokenizer.model"])
def test_crafted_tokenizer_file_names_are_refused(tiny_encoder_dir, tmp_path, name):
    """A stranger's checkpoint may name files anywhere; loading it must write nothing outside a
    private temporary directory and fail with one line."""
    import torch

    from utils import UserError
    target = tmp_path / "victim" / "escaped.txt"
    target.parent.mkdir()
    name = str(target) if name == "ABSOLUTE" else name
    good = tmp_path / "good.pt"
    TwoTowerModel.from_pretrained(str(tiny_encoder_dir)).save(good)
    payload = torch.load(good, weights_only=True)
    payload["tokenizer_files"][name] = "pwned"
    evil = tmp_path / "victim" / "sub" / "evil.pt"
    evil.parent.mkdir()
    torch.save(payload, evil)
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(UserError, match="refusing tokenizer file"):
        TwoTowerModel.from_pretrained(evil)
    assert {p for p in tmp_path.rglob("*")} == before and not target.exists()
