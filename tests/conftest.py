"""Shared fixtures: tiny synthetic ESCI data made once per session; no network, no GPU."""
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL_ESCI = ROOT.parent / "shared" / "real_esci"


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """The tiny built-in sample catalog (ESCI schema), written once."""
    from sample_catalog import make_sample_catalog
    d = tmp_path_factory.mktemp("raw_tiny")
    make_sample_catalog(d, "tiny", seed=0)
    return d


@pytest.fixture(scope="session")
def tiny_data(tiny_raw, tmp_path_factory) -> Path:
    """prepare_training_data.py run on the tiny sample."""
    import prepare_training_data as prep
    d = tmp_path_factory.mktemp("data_tiny")
    prep.main(prep.parse_args(["--raw-dir", str(tiny_raw), "--data-dir", str(d)]))
    return d


@pytest.fixture
def data_dir(tiny_data, tmp_path) -> Path:
    """A private copy of the prepared tiny data (tests may add hard negatives or indices to it)."""
    import shutil
    d = tmp_path / "data"
    shutil.copytree(tiny_data, d, ignore=shutil.ignore_patterns("indices*", "embeddings_cache", "hard_negatives*"))
    return d


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT (2 layers, hidden 32) with MiniLM's tokenizer, saved as an
    HF model directory, so model tests run in milliseconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from utils import resolve_model_path
    d = tmp_path_factory.mktemp("tiny_encoder")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def tiny_model(tiny_encoder_dir):
    from two_tower_model import TwoTowerModel
    return TwoTowerModel.from_pretrained(str(tiny_encoder_dir))
