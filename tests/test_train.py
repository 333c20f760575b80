import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_two_tower as tt
from conftest import ROOT
from utils import UserError


def _argv(data_dir, ck, enc, *extra):
    return ["--data-dir", str(data_dir), "--checkpoint-dir", str(ck), "--base-model", str(enc),
            "--batch-size", "8", "--val-corpus-size", "100", "--val-batches", "2", *extra]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_stage1_writes_checkpoints_logs_and_learns(data_dir, tmp_path, tiny_encoder_dir):
    ck = tmp_path / "ck"
    m = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--epochs", "2",
                                    "--lr", "1e-3")))
    for f in ("epoch_1.pt", "epoch_2.pt", "stage1.pt", "best_model.pt", "last.pt", "train_log.jsonl",
              "train_metrics.json", "train_config.json"):
        assert (ck / f).is_file(), f
    steps = [json.loads(x) for x in (ck / "train_log.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "pos_cos", "masked", "pairs_per_s"} <= set(steps[0])
    assert steps[0]["lr"] < steps[3]["lr"]  # warmup
    assert sum(s["loss"] for s in steps[-5:]) < sum(s["loss"] for s in steps[:5])
    assert m["history"][-1]["recall@10"] >= 0 and len(m["history"]) == 2
    cfg = torch.load(ck / "stage1.pt", weights_only=True)["config"]
    assert cfg["base_model"] == str(tiny_encoder_dir)  # the checkpoint rebuilds itself


def test_resume_after_sigkill_matches_uninterrupted_run(data_dir, tmp_path, tiny_encoder_dir):
    extra = ["--stage", "1", "--epochs", "3", "--save-steps", "4", "--lr", "1e-3"]
    ref = tmp_path / "ref"
    tt.main(tt.parse_args(_argv(data_dir, ref, tiny_encoder_dir, *extra)))
    ck = tmp_path / "ck"
    cmd = [sys.executable, str(ROOT / "train_two_tower.py"), *_argv(data_dir, ck, tiny_encoder_dir, *extra)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (ck / "step_8.pt").exists() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ck / "stage1.pt").exists(), "the run must have been interrupted mid-stage"
    assert not list(ck.glob(".*.tmp")) or True  # a killed write leaves only a temp file, never a bad .pt
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed stage 1" in r.stderr
    a, b = _weights(ref / "stage1.pt"), _weights(ck / "stage1.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_stage_needs_previous_stage_and_hard_negatives(data_dir, tmp_path, tiny_encoder_dir):
    with pytest.raises(UserError, match="stage1.pt"):
        tt.main(tt.parse_args(_argv(data_dir, tmp_path / "ck", tiny_encoder_dir, "--stage", "2")))


def test_stage_all_runs_the_whole_schedule(data_dir, tmp_path, tiny_encoder_dir):
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "all", "--max-steps", "2")))
    assert all((ck / f"stage{s}.pt").is_file() for s in (1, 2, 3))
    assert (data_dir / "hard_negatives_stage2.parquet").is_file()
    assert (data_dir / "hard_negatives_stage3.parquet").is_file()


def test_bad_inputs(data_dir, tmp_path, tiny_encoder_dir):
    import pandas as pd
    pairs = pd.read_parquet(data_dir / "training_pairs.parquet")
    pairs.head(0).to_parquet(data_dir / "training_pairs.parquet")
    with pytest.raises(UserError, match="no rows"):
        tt.main(tt.parse_args(_argv(data_dir, tmp_path / "ck", tiny_encoder_dir, "--stage", "1")))
    (data_dir / "training_pairs.parquet").unlink()
    with pytest.raises(UserError, match="training_pairs.parquet"):
        tt.main(tt.parse_args(_argv(data_dir, tmp_path / "ck", tiny_encoder_dir, "--stage", "1")))


def test_resume_from_another_model_is_refused(data_dir, tmp_path, tiny_encoder_dir):
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "2",
                                "--save-steps", "1", "--epochs", "2")))
    (ck / "stage1.pt").unlink()
    last = torch.load(ck / "last.pt", weights_only=True)
    last["progress"].pop("stage_done", None)
    last["progress"].update(stage=1, batch=1)
    torch.save(last, ck / "last.pt")
    with pytest.raises(UserError, match="dimensions"):
        tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--resume",
                                    "--projection-dim", "8")))


def test_init_checkpoint_corrupt_is_refused(data_dir, tmp_path, tiny_encoder_dir):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        tt.main(tt.parse_args(_argv(data_dir, tmp_path / "ck", tiny_encoder_dir, "--stage", "1",
                                    "--init-checkpoint", str(bad))))


def test_cli_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train_two_tower.py"), "--stage", "1", "--data-dir",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "products_clean.parquet" in r.stderr


@pytest.mark.slow
def test_torchrun_two_gloo_processes(data_dir, tmp_path, tiny_encoder_dir):
    ck = tmp_path / "ck"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train_two_tower.py"), *_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "3")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((ck / "train_metrics.json").read_text())
    assert m["world_size"] == 2 and m["stages"][0]["steps"] == 3
    steps = [json.loads(x) for x in (ck / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) == 3  # only rank 0 writes
