import json
from pathlib import Path

import pandas as pd
import pytest

import cli
import fileio
import utils


def test_atomic_path_renames_on_success_and_cleans_on_failure(tmp_path):
    target = tmp_path / "out" / "x.json"
    fileio.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(tmp_path / "out" / "y.parquet") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.json"]


def test_atomic_overwrite_keeps_old_file_until_success(tmp_path):
    target = tmp_path / "t.parquet"
    fileio.write_parquet(target, pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(ValueError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_bytes(b"garbage")
            raise ValueError
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]


def test_parquet_writer_streams_row_groups(tmp_path):
    import pyarrow as pa
    schema = pa.schema([("a", pa.int64())])
    with fileio.parquet_writer(tmp_path / "s.parquet", schema) as w:
        for i in range(3):
            w.write_table(pa.table({"a": [i, i]}, schema=schema))
    assert pd.read_parquet(tmp_path / "s.parquet")["a"].tolist() == [0, 0, 1, 1, 2, 2]


def test_clean_text_strips_html_entities_and_nan():
    assert utils.clean_text("<p>Fast&amp;Quiet</p><br>  fan ") == "Fast&Quiet fan"
    assert utils.clean_text(None) == "" and utils.clean_text(float("nan")) == ""


def test_build_product_text_order_dedup_and_truncation():
    t = utils.build_product_text("Sony Earbuds, Black", "Sony", "Black", "Long battery\n<b>IPX5</b>")
    assert t == "Sony Earbuds, Black. Long battery; IPX5"
    t = utils.build_product_text("Earbuds", "Sony", "Red", None)
    assert t == "Earbuds. Brand: Sony. Color: Red"
    assert utils.build_product_text(None, None, None, "only bullets") == "only bullets"
    assert utils.build_product_text(None, "Sony", "Red", None) == ""
    long = utils.build_product_text("word " * 400)
    assert len(long) <= utils.PRODUCT_TEXT_MAX_CHARS and not long.endswith(" ")


def test_resolve_model_path_packaged_local_and_hub(tmp_path):
    packaged = utils.resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert Path(packaged, "config.json").is_file()
    assert utils.resolve_model_path("all-MiniLM-L6-v2") == packaged
    assert utils.resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert utils.resolve_model_path("someone/other-model") == "someone/other-model"
    f = tmp_path / "file.bin"
    f.write_text("x")
    with pytest.raises(utils.UserError):
        utils.resolve_model_path(str(f))


def test_run_cli_turns_user_error_into_exit_2(caplog):
    import argparse

    def bad(_):
        raise utils.UserError("thing.parquet not found (do this)")
    assert cli.run_cli(bad, argparse.Namespace(log_level="INFO")) == 2
    assert "thing.parquet not found" in caplog.text
    assert cli.run_cli(lambda a: None, argparse.Namespace(log_level="INFO")) == 0


def test_seed_and_device():
    import random

    import numpy as np
    utils.set_seed(3)
    a = (random.random(), np.random.rand())
    utils.set_seed(3)
    assert a == (random.random(), np.random.rand())
    dev = utils.get_device("cpu")
    assert dev.type == "cpu"
    assert isinstance(utils.bf16_supported(dev), bool)


def test_widen_onednn_cache_sets_a_default_and_keeps_the_users(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    utils.widen_onednn_cache()
    assert utils.os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "65536"
    assert utils.ONEDNN_CACHE_CAPACITY > 1024  # oneDNN's own default, which thrashes on length groups
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "300")
    utils.widen_onednn_cache()
    assert utils.os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "300"
