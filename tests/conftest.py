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
