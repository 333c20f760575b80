import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import checkpoint as C
import losses as L
import train_embed
import train_ops
import train_parts as TP
import train_two_tower as tt
import trainer as TR
from conftest import ROOT
import utils
from paths import hard_negatives_path
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
    assert [h["epoch"] for h in m["history"]] == [1, 2] and m["history"][-1]["val_queries"] > 0
    assert all(0.0 <= h["recall@10"] <= 1.0 for h in m["history"])
    prog = json.loads((ck / "progress.json").read_text())  # the light mirror of last.pt's progress
    assert prog["stage_done"] == 1 and prog["history"] == m["history"] and prog["best"] == m["best"]
    assert C.stage_done(ck, 1) and not C.stage_done(ck, 2)
    cfg = torch.load(ck / "stage1.pt", weights_only=True)["config"]
    assert cfg["base_model"] == str(tiny_encoder_dir)  # the checkpoint rebuilds itself


def test_resume_after_sigkill_matches_uninterrupted_run(data_dir, tmp_path, tiny_encoder_dir):
    extra = ["--stage", "1", "--epochs", "3", "--save-steps", "4", "--lr", "1e-3"]
    # every run single-threaded in its own process: on a loaded machine OpenMP/MKL may change the
    # thread count between runs, and with it the float summation order, which --lr 1e-3 amplifies
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, str(ROOT / "train_two_tower.py"), *_argv(data_dir, ref, tiny_encoder_dir, *extra)],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    ck = tmp_path / "ck"
    cmd = [sys.executable, str(ROOT / "train_two_tower.py"), *_argv(data_dir, ck, tiny_encoder_dir, *extra)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    # wait for the second step checkpoint (a loaded CI machine may take minutes to get there)
    while not (ck / "step_8.pt").exists() and proc.poll() is None and time.time() - t0 < 900:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ck / "step_8.pt").exists(), "the run was killed before it saved any state (too slow to start?)"
    assert not (ck / "stage1.pt").exists(), "the run must have been interrupted mid-stage"
    for f in ck.glob("*.pt"):  # a killed write leaves at most a temp file, never a truncated .pt
        assert "model" in torch.load(f, weights_only=True, map_location="cpu"), f
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed stage 1" in r.stderr
    a, b = _weights(ref / "stage1.pt"), _weights(ck / "stage1.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # the steps the killed run logged after its last saved state are trained again, but logged once
    steps = [json.loads(x)["step"] for x in (ck / "train_log.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(x)["step"] for x in (ref / "train_log.jsonl").read_text().splitlines()]
    assert steps == ref_steps
    # only the newest --keep-checkpoints (default 2) step files stay
    assert sorted(f.name for f in ck.glob("step_*.pt")) == sorted(f.name for f in ref.glob("step_*.pt"))
    assert len(list(ref.glob("step_*.pt"))) == 2
    assert json.loads((ck / "train_metrics.json").read_text())["best"] == \
        json.loads((ref / "train_metrics.json").read_text())["best"]


def _snapshot(d):
    return {f.name: f.read_bytes() for f in sorted(d.iterdir()) if f.is_file()}


def test_resume_of_a_finished_stage_is_a_no_op_that_says_so(data_dir, tmp_path, tiny_encoder_dir, caplog):
    import logging
    caplog.set_level(logging.INFO)
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "2")))
    before = _snapshot(ck)
    for resume in (["--resume"], ["--resume", str(ck / "last.pt")]):
        caplog.clear()
        m = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", *resume)))
        assert m["skipped"] == 1 and "already complete" in caplog.text
        assert _snapshot(ck) == before  # train_metrics.json, train_config.json, ... untouched
    # another stage's state named explicitly is refused (it used to be ignored: a silent restart)
    with pytest.raises(UserError, match="holds the state of stage 1, not stage 2"):
        tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--hard-negatives", "none",
                                    "--resume", str(ck / "step_2.pt" if (ck / "step_2.pt").exists()
                                                    else ck / "last.pt"))))


def test_failed_run_keeps_the_previous_train_config(data_dir, tmp_path, tiny_encoder_dir):
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "1")))
    before = (ck / "train_config.json").read_text()
    with pytest.raises(UserError):  # fails in set-up (no mined negatives), before any training
        tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--lr", "1e-3")))
    assert (ck / "train_config.json").read_text() == before


def test_orphaned_temporary_files_are_removed_at_start(data_dir, tmp_path, tiny_encoder_dir):
    import os
    ck = tmp_path / "ck"
    ck.mkdir()
    dead = ck / ".last.pt.pid999999999.abc123.tmp"  # a write killed mid-way (no such process)
    live = ck / f".last.pt.pid{os.getpid()}.def456.tmp"  # a write in progress (this process)
    other = ck / ".notes.tmp"  # not ours
    for f in (dead, live, other):
        f.write_bytes(b"partial")
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "1")))
    assert not dead.exists() and live.exists() and other.exists()


def test_stage_needs_previous_stage_and_hard_negatives(data_dir, tmp_path, tiny_encoder_dir):
    with pytest.raises(UserError, match="stage1.pt"):
        tt.main(tt.parse_args(_argv(data_dir, tmp_path / "ck", tiny_encoder_dir, "--stage", "2")))


def test_stage3_needs_its_own_hard_negatives(data_dir, tmp_path, tiny_encoder_dir):
    """Stage 3 never silently falls back to the stage-2 negatives."""
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "1")))
    pairs = pd.read_parquet(data_dir / "training_pairs.parquet")
    pairs[pairs["label"] == 0].head(20).to_parquet(hard_negatives_path(data_dir, 2))
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--max-steps", "1")))
    with pytest.raises(UserError, match="hard_negatives_stage3.parquet"):
        tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "3", "--max-steps", "1")))
    # the best/history of stage 1 carried into stage 2 came from progress.json
    m = json.loads((ck / "train_metrics.json").read_text())
    assert [r["stage"] for r in m["stages"]] == [1, 2] and {h["stage"] for h in m["history"]} == {1, 2}


def test_progress_json_is_restored_from_last_pt_after_a_torn_write(data_dir, tmp_path, tiny_encoder_dir):
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "1")))
    good = json.loads((ck / "progress.json").read_text())
    (ck / "progress.json").write_text(json.dumps({**good, "token": "stale", "stage_done": 0}))
    assert C.read_progress(ck)["token"] == good["token"] and C.stage_done(ck, 1)


def _first_losses(ck):
    return [json.loads(x)["loss"] for x in (ck / "train_log.jsonl").read_text().splitlines()]


SMOKE = {  # flag -> check on (metrics, checkpoint dir); every training flag goes through main()
    "loss-combined": (["--loss", "combined"], None),
    "loss-infonce": (["--loss", "infonce"], None),
    "loss-contrastive": (["--loss", "contrastive", "--negatives", "2"], None),
    "loss-triplet": (["--loss", "triplet", "--negatives", "2"], None),
    "logq": (["--logq", "--negatives", "1"], "logq"),
    "symmetric": (["--no-symmetric"], "symmetric"),
    "query-typos": (["--query-typos", "1.0"], "query_typos"),
    "dropout": (["--dropout", "0"], "dropout"),
    "dropout-kernel": (["--dropout-kernel", "torch"], "dropout_kernel"),
    "lexical-distill": (["--lexical-distill", "5", "--negatives", "1"], "lexical_distill"),
    "grad-accum": (["--grad-accum", "2"], "grad_accum"),
    "patience": (["--patience", "1", "--lr", "0", "--epochs", "3"], "patience"),
    "separate": (["--tower-sharing", "separate"], "separate"),
    "projection": (["--projection-dim", "8"], "projection"),
    "no-topic-batches": (["--no-topic-batches"], "topic_batches"),
}


@pytest.mark.parametrize("case", sorted(SMOKE))
def test_every_training_flag_two_steps(case, data_dir, tmp_path, tiny_encoder_dir):
    flags, check = SMOKE[case]
    ck = tmp_path / "ck"
    limit = [] if check == "patience" else ["--max-steps", "2", "--epochs", "1"]
    m = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", *limit, *flags)))
    steps = [json.loads(x) for x in (ck / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(s["loss"]) for s in steps)
    cfg = torch.load(ck / "stage1.pt", weights_only=True)["config"]
    if check != "patience":
        assert m["stages"][0]["steps"] == 2 and len(steps) == 2
    if case.startswith("loss-"):
        ref = tmp_path / "ref"
        other = "infonce" if case != "loss-infonce" else "triplet"
        tt.main(tt.parse_args(_argv(data_dir, ref, tiny_encoder_dir, "--stage", "1", *limit, "--loss", other,
                                    "--negatives", "2")))
        assert _first_losses(ck)[0] != pytest.approx(_first_losses(ref)[0])  # another loss, another value
    if check in ("logq", "symmetric", "query_typos", "lexical_distill", "dropout", "dropout_kernel", "topic_batches"):
        ref = tmp_path / "ref"  # the first loss differs without the flag (dropout kernel: other masks; topic
        # batches: another first batch)
        same = [f for f in flags if f not in ("--logq", "--no-symmetric", "--query-typos", "1.0", "--lexical-distill",
                                              "5", "--dropout", "0", "--dropout-kernel", "torch", "--no-topic-batches")]
        tt.main(tt.parse_args(_argv(data_dir, ref, tiny_encoder_dir, "--stage", "1", *limit, *same)))
        assert _first_losses(ck)[0] != pytest.approx(_first_losses(ref)[0], abs=1e-6)
    if check == "lexical_distill":  # the KL term is logged and is what made the loss differ
        assert all(s["distill"] > 0 for s in steps)
    if check == "grad_accum":  # each optimiser step consumed two batches of 8
        assert [s["pairs"] for s in steps] == [16, 32]
    if check == "patience":  # lr 0 never improves after epoch 1: stop after epoch 2 of 3
        assert [h["epoch"] for h in m["history"]] == [1, 2]
    if check == "separate":
        assert cfg["tower_sharing"] == "separate"
        keys = torch.load(ck / "stage1.pt", weights_only=True)["model"].keys()
        assert any(k.startswith("product_tower.encoder.") for k in keys)
    if check == "projection":
        assert cfg["projection_dim"] == 8
        from two_tower_model import TwoTowerModel
        assert TwoTowerModel.from_pretrained(ck / "stage1.pt").encode_queries(["x"]).shape == (1, 8)


def test_set_dropout_reaches_every_dropout_layer_and_makes_training_forwards_repeat(tiny_encoder_dir):
    from two_tower_model import TwoTowerModel
    model = TwoTowerModel.from_pretrained(str(tiny_encoder_dir)).train()
    batch = model.tokenizer(["red cordless drill", "2x4 stud"], padding=True, return_tensors="pt")
    ids, am = batch["input_ids"], batch["attention_mask"]
    torch.manual_seed(0)
    assert not torch.equal(model.query_tower(ids, am), model.query_tower(ids, am))  # the encoder's own 0.1
    n = train_ops.set_dropout(model, 0.0)
    assert n >= 2 * 3 + 1  # embeddings + per layer: attention, attention output, feed-forward output
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert torch.equal(model.query_tower(ids, am), model.query_tower(ids, am))
    with pytest.raises(SystemExit):
        tt.parse_args(["--stage", "1", "--dropout", "1"])  # p = 1 would zero every activation


@pytest.mark.parametrize("towers", ["shared", "separate"])
def test_freeze_layers_keeps_the_embeddings_and_lower_layers_at_their_start(data_dir, tmp_path, tiny_encoder_dir,
                                                                             towers):
    """--freeze-layers 1 on the tiny 2-layer encoder: embeddings and layer 0 of every tower come out of
    training bit-identical, layer 1 and the rest move; 2 (= every layer) is refused."""
    from two_tower_model import TwoTowerModel
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "2", "--lr", "1e-3",
                                "--tower-sharing", towers, "--freeze-layers", "1")))
    start = TwoTowerModel.from_pretrained(str(tiny_encoder_dir), tower_sharing=towers).state_dict()
    after = _weights(ck / "stage1.pt")
    fixed = [k for k in after if ".embeddings." in k or ".layer.0." in k]
    moving = [k for k in after if ".layer.1." in k and k.endswith("weight")]
    assert fixed and moving and set(fixed) | set(moving) <= set(start)
    assert {k.split(".")[0] for k in fixed} == {"query_tower", "product_tower"}  # separate towers: two encoders
    assert all(torch.equal(after[k], start[k]) for k in fixed)
    assert all(not torch.equal(after[k], start[k]) for k in moving)
    with pytest.raises(UserError, match="--freeze-layers 2: the encoder has 2 layers"):
        tt.main(tt.parse_args(_argv(data_dir, tmp_path / "ck2", tiny_encoder_dir, "--stage", "1", "--max-steps", "1",
                                    "--freeze-layers", "2")))


def test_every_tensor_a_loss_receives_is_on_the_model_device():
    """Built on the `meta` device: a tensor left on the CPU (the old triplet padding mask) fails."""
    from train_data import Batch
    b = Batch(q_rows=np.array([0, 1, 2]), p_rows=np.array([5, 6, 7]), weights=np.array([1.0, 0.9, 0.6], np.float32),
              neg_rows=np.array([[8, -1], [9, 10], [-1, -1]]))
    dev = torch.device("meta")
    kw = TP.loss_inputs(b, dev, {0: {6}}, np.zeros(20, np.float32))
    assert set(kw) == {"weights", "mask", "log_q", "negative_valid"}
    for k, v in kw.items():
        assert v.device == dev, k
    cpu = TP.loss_inputs(b, torch.device("cpu"), {0: {6}}, None)
    assert cpu["log_q"] is None and cpu["negative_valid"].tolist() == [[True, False], [True, True], [False, False]]
    assert cpu["mask"][0, 1] and not cpu["mask"][1, 0]  # product 6 is judged for query 0
    # and every loss runs on those inputs with embeddings on the same device
    q = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    for name in L.LOSSES:
        out = L.build_loss(name)(q, q, torch.nn.functional.normalize(torch.randn(3, 2, 4), dim=-1), **cpu)
        assert torch.isfinite(out), name


def test_bad_inputs(data_dir, tmp_path, tiny_encoder_dir):
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
    prog = json.loads(last["progress"])
    prog.pop("stage_done", None)
    prog.update(stage=1, batch=1)
    last["progress"] = json.dumps(prog)
    torch.save(last, ck / "last.pt")
    # the sizes in the order the message names them (they used to be swapped)
    with pytest.raises(UserError, match=r"holds a 32-dimension model .* but this stage builds a 8-dimension"):
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


def test_model_selection_rule():
    """best_model.pt: higher Recall@10 + NDCG@10 wins; a tie goes to the lower val loss (not the earlier)."""
    best = {"score": 1.2, "val_loss": 0.5}
    assert TP.better({"recall@10": 0.7, "ndcg@10": 0.6, "val_loss": 0.9}, best, "recall+ndcg")
    assert not TP.better({"recall@10": 0.5, "ndcg@10": 0.6, "val_loss": 0.1}, best, "recall+ndcg")
    assert TP.better({"recall@10": 0.6, "ndcg@10": 0.6, "val_loss": 0.4}, best, "recall+ndcg")  # tie, lower loss
    assert not TP.better({"recall@10": 0.6, "ndcg@10": 0.6, "val_loss": 0.5}, best, "recall+ndcg")
    assert TP.better({"recall@10": 0.0, "ndcg@10": 0.0, "val_loss": 0.4}, {"score": -0.5, "val_loss": 0.5}, "val_loss")
    assert TP.better({"recall@10": 0.0, "ndcg@10": 0.0, "val_loss": 9.0}, {"recall@10": -1.0, "score": None}, "ndcg@10")
    assert TP.shown_score("val_loss", TP.SELECT["val_loss"]({"val_loss": 0.4})) == 0.4
    assert TP.shown_score("recall+ndcg", 1.2) == 1.2


def test_selection_rule_falls_back_to_the_last_epoch_on_a_tiny_validation_set():
    assert TP.selection_rule("val_loss", 406, 50) == ("val_loss", None)
    assert TP.selection_rule("recall+ndcg", 7, 0) == ("recall+ndcg", None)  # 0: always --select
    rule, why = TP.selection_rule("val_loss", 7, 50)
    assert rule == "last" and "only 7 validation queries" in why and "--min-val-queries 50" in why
    assert TP.selection_rule("last", 500, 50) == ("last", None)
    # 'last': a later epoch wins whatever its scores; the same epoch does not beat itself
    early = {"recall@10": 0.9, "ndcg@10": 0.9, "val_loss": 0.1, "epoch": 1}
    assert TP.better({"recall@10": 0.1, "ndcg@10": 0.1, "val_loss": 9.0, "epoch": 2},
                     {"score": TP.SELECT["last"](early), "val_loss": 0.1}, "last")
    assert not TP.better(early, {"score": TP.SELECT["last"](early), "val_loss": 0.1}, "last")
    late = {"recall@10": 0.1, "ndcg@10": 0.1, "val_loss": 0.5, "epoch": 2}
    assert TP.best_of([early, late], "val_loss") is early and TP.best_of([early, late], "last") is late
    assert TP.best_of([], "val_loss") is None


@pytest.mark.parametrize("min_val, best_epoch, rule", [(None, 2, "last"), ("0", 1, "val_loss"), ("1", 1, "val_loss")])
def test_min_val_queries_decides_whether_the_val_loss_picks_best_model(data_dir, tmp_path, tiny_encoder_dir,
                                                                      monkeypatch, min_val, best_epoch, rule):
    """The tiny data has a handful of val queries: by default best_model.pt is the last epoch even
    when the val loss rose; --min-val-queries 0 (or a threshold the val set reaches) lets it decide."""
    real = tt.Trainer.validate
    losses = iter([0.1, 0.9])  # epoch 1 looks better by val loss

    def validate(self, *a, **k):
        return {**real(self, *a, **k), "val_loss": next(losses)}

    monkeypatch.setattr(tt.Trainer, "validate", validate)
    ck = tmp_path / "ck"
    extra = [] if min_val is None else ["--min-val-queries", min_val]
    m = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--epochs", "2", "--epoch-pairs", "16",
                                    *extra)))
    n_val = m["selection"]["val_queries"]
    assert 1 <= n_val < 50
    assert m["best"]["epoch"] == best_epoch and m["selection"]["select"] == rule
    assert (m["selection"]["why"] is not None) == (rule == "last")
    on_disk = json.loads((ck / "train_metrics.json").read_text())
    assert on_disk["selection"] == m["selection"] and on_disk["selection"]["asked"] == "val_loss"
    for k, v in _weights(ck / f"epoch_{best_epoch}.pt").items():
        torch.testing.assert_close(_weights(ck / "best_model.pt")[k], v, msg=k)


def test_a_stage_run_under_another_selection_rule_rescores_the_earlier_stages(data_dir, tmp_path, tiny_encoder_dir,
                                                                             monkeypatch):
    """Stage 1 picked by 'last' (scores are epoch numbers), stage 2 by val_loss: the carried best is
    rescored by val loss, or stage 2's better val loss could never beat an epoch number."""
    real = tt.Trainer.validate

    def validate(self, *a, **k):
        out = real(self, *a, **k)
        return {**out, "val_loss": 1.0 / (1 + len(self.history))}  # every epoch better than the last

    monkeypatch.setattr(tt.Trainer, "validate", validate)
    ck = tmp_path / "ck"
    s1 = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "2")))
    assert s1["best"]["select"] == "last"
    s2 = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--hard-negatives", "none",
                                     "--max-steps", "2", "--min-val-queries", "0")))
    assert s2["best"]["select"] == "val_loss" and s2["best"]["stage"] == 2
    for k, v in _weights(ck / "stage2.pt").items():
        torch.testing.assert_close(_weights(ck / "best_model.pt")[k], v, msg=k)


def test_label_weights_change_what_is_trained(data_dir, tmp_path):
    """--label-weights: S=0 removes S positives; C counts from stage 3 with the given weight."""
    from train_data import StageData
    from fileio import load_catalog
    cat = load_catalog(data_dir)
    idx = pd.Series(np.arange(len(cat)), index=cat["product_id"].to_numpy())
    pairs = pd.read_parquet(data_dir / "training_pairs.parquet")
    n = pairs[pairs["label"] > 0]["esci_label"].value_counts()
    base = StageData(data_dir, "train", 3, [], idx)
    no_s = StageData(data_dir, "train", 3, [], idx, {"S": 0.0, "C": 0.25})
    assert len(base.pos_w) == n.sum() and len(no_s.pos_w) == n.sum() - n.get("S", 0)
    assert set(np.round(no_s.pos_w, 4)) <= {1.0, 0.25} and (no_s.pos_w == 0.25).sum() == n.get("C", 0)
    assert TP.parse_label_weights("e=1, S=0.5,C=0") == {"E": 1.0, "S": 0.5, "C": 0.0}
    for bad in ("X=1", "E=-1", "E=", "E"):
        with pytest.raises(Exception, match="bad label weight"):
            TP.parse_label_weights(bad)


def test_batch_planning_options(data_dir):
    """bucket_batches=0 gives unsorted batches; distinct_queries avoids repeated queries; every
    positive is trained exactly once per epoch either way."""
    from train_data import StageData, plan_epoch
    from fileio import load_catalog
    cat = load_catalog(data_dir)
    sd = StageData(data_dir, "train", 1, [], pd.Series(np.arange(len(cat)), index=cat["product_id"].to_numpy()))
    lens = np.random.default_rng(0).integers(5, 100, len(cat))

    def rows(plan):
        return sorted((q, p) for b in plan for q, p in zip(b.q_rows.tolist(), b.p_rows.tolist()))
    everything = sorted(zip(sd.pos_q.tolist(), sd.pos_p.tolist()))
    plans = {k: plan_epoch(sd, lens, 16, 1, 0, 1, *k) for k in [(16, None, False), (0, None, False), (0, None, True)]}
    for plan in plans.values():
        assert rows(plan) == everything
    spread = {k: np.mean([np.ptp(lens[b.p_rows]) for b in plan]) for k, plan in plans.items()}
    assert spread[(16, None, False)] < spread[(0, None, False)]  # bucketing sorts by length, 0 does not
    dups = {k: sum(len(b.q_rows) - len(set(b.q_rows.tolist())) for b in plan) for k, plan in plans.items()}
    assert dups[(0, None, True)] < dups[(0, None, False)]
    assert sum(len(b.q_rows) == 16 for b in plans[(0, None, True)]) >= len(plans[(0, None, True)]) - 2  # full


def test_topic_batches_fill_each_batch_from_few_query_clusters(data_dir):
    """plan_epoch(topics=...) takes the rows of one query cluster together (TAS-B): a batch spans
    few clusters where random batches span many, every positive is still trained exactly once, and
    the order of the clusters changes from epoch to epoch; topic_clusters finds separated groups."""
    from train_data import StageData, plan_epoch, topic_clusters
    from fileio import load_catalog
    cat = load_catalog(data_dir)
    sd = StageData(data_dir, "train", 1, [], pd.Series(np.arange(len(cat)), index=cat["product_id"].to_numpy()))
    lens = np.random.default_rng(0).integers(5, 100, len(cat))
    n_q = len(sd.query_ids)
    topics = np.random.default_rng(1).permutation(n_q) % max(2, n_q // 3)  # about three queries a cluster
    everything = sorted(zip(sd.pos_q.tolist(), sd.pos_p.tolist()))

    def spans(plan):
        return np.mean([len(set(topics[b.q_rows].tolist())) for b in plan])
    plan = plan_epoch(sd, lens, 16, 1, 0, 1, 16, None, False, topics)
    random_plan = plan_epoch(sd, lens, 16, 1, 0, 1, 0)
    assert sorted((q, p) for b in plan for q, p in zip(b.q_rows.tolist(), b.p_rows.tolist())) == everything
    assert spans(plan) < 0.5 * spans(random_plan)
    first = [topics[b.q_rows[0]] for b in plan]
    assert first != [topics[b.q_rows[0]] for b in plan_epoch(sd, lens, 16, 1, 0, 2, 16, None, False, topics)]
    sizes = [len(b.q_rows) for b in plan]
    assert sizes[:-1] == [16] * (len(plan) - 1)  # every batch full but the last

    rng = np.random.default_rng(2)
    centres = np.eye(8, dtype=np.float32)[:3] * 5
    x = np.concatenate([c + rng.normal(0, 0.3, (20, 8)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    found = topic_clusters(x, 3, seed=0)
    assert [len(set(found[i * 20:(i + 1) * 20].tolist())) for i in range(3)] == [1, 1, 1]
    assert len(set(found.tolist())) == 3
    assert (topic_clusters(x, 1, seed=0) == 0).all() and len(set(topic_clusters(x[:2], 5, 0).tolist())) <= 2


def test_stage2_without_mined_negatives(data_dir, tmp_path, tiny_encoder_dir):
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "1")))
    with pytest.raises(UserError, match="hard_negatives_stage2"):
        tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--max-steps", "1")))
    m = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--max-steps", "1",
                                    "--hard-negatives", "none", "--distinct-queries", "--bucket-batches", "0")))
    assert m["stages"][-1]["stage"] == 2


def test_graded_mask_keeps_lower_grades_as_negatives():
    """Query 0 judges product 5 E and product 6 S. Graded: the E row keeps 6 as a negative (E above
    S), the S row masks 5 (E is never pushed below S). Plain: both rows mask both."""
    from train_data import Batch
    qidx, rows, grades = np.array([0, 0]), np.array([5, 6]), np.array([0, 1])
    b = Batch(q_rows=np.array([0, 0, 1]), p_rows=np.array([5, 6, 7]), weights=np.ones(3, np.float32),
              neg_rows=np.full((3, 1), -1), grades=np.array([0, 1, 0]))
    graded = TP.loss_inputs(b, torch.device("cpu"), TP.judged_sets(qidx, rows, grades, True), None, graded=True)
    plain = TP.loss_inputs(b, torch.device("cpu"), TP.judged_sets(qidx, rows, grades, False), None)
    g, p = graded["mask"][:, :3], plain["mask"][:, :3]
    assert not g[0, 1] and g[1, 0]  # E row: S product is a negative; S row: E product masked
    assert p[0, 1] and p[1, 0]
    assert not g[2, :2].any() and not p[2, :2].any()  # another query's row: nothing masked off its diagonal


def test_redo_of_stage2_starts_from_the_best_of_stage1(data_dir, tmp_path, tiny_encoder_dir):
    """A finished stage-2 run that is redone must not compete with its own old result: the redo
    starts from stage 1's best, and best_model.pt is the better of stage 1 and the redone stage 2."""
    ck = tmp_path / "ck"
    s2 = ["--stage", "2", "--hard-negatives", "none", "--max-steps", "2"]
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "2")))
    stage1_best = json.loads((ck / "train_metrics.json").read_text())["best"]
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, *s2, "--lr", "1e-3")))
    # the first stage-2 run is made unbeatable, as a lucky earlier run would be
    pj = ck / "progress.json"
    prog = json.loads(pj.read_text())
    prog["best"] = {**prog["best"], "score": 99.0, "stage": 2, "epoch": prog["history"][-1]["epoch"]}
    pj.write_text(json.dumps(prog))  # same token as last.pt: read_progress takes it
    assert C.read_progress(ck)["best"]["score"] == 99.0
    before = (ck / "stage2.pt").stat().st_mtime_ns
    with pytest.raises(UserError, match=r"stage2\.pt exists \(stage 2 finished\); pass --overwrite"):
        tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, *s2, "--lr", "0")))
    assert (ck / "stage2.pt").stat().st_mtime_ns == before
    redo = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, *s2, "--lr", "0", "--overwrite")))  # lr 0: stage 2 = stage 1
    assert redo["best"]["score"] < 99.0
    assert [h["stage"] for h in redo["history"]] == [1, 2]  # the old stage-2 epoch is gone
    best = torch.load(ck / "best_model.pt", weights_only=True)
    if redo["best"]["stage"] == 1:
        assert redo["best"] == stage1_best
        src = ck / f"epoch_{stage1_best['epoch']}.pt"
    else:
        src = ck / "stage2.pt"
    for k, v in torch.load(src, weights_only=True)["model"].items():
        torch.testing.assert_close(best["model"][k], v, msg=k)


@pytest.mark.parametrize("kill_after", ["stage_checkpoint", "metrics"])
def test_kill_while_finishing_a_stage_then_resume_gives_the_same_result(data_dir, tmp_path, tiny_encoder_dir,
                                                                        monkeypatch, kill_after):
    """The end of a stage writes stage1.pt, train_metrics.json, then last.pt marked done; a kill
    between any two leaves no stage marked done, and the resumed run ends with the same files."""
    extra = ["--stage", "1", "--epochs", "2", "--lr", "1e-3"]
    ref = tmp_path / "ref"
    tt.main(tt.parse_args(_argv(data_dir, ref, tiny_encoder_dir, *extra)))
    ck = tmp_path / "ck"
    real_write, real_save = TR.write_json, tt.Trainer._save_state

    class Killed(BaseException):
        pass

    def write_json(path, obj):
        real_write(path, obj)
        if kill_after == "metrics" and path.name == "train_metrics.json":
            raise Killed

    def save_state(self, model, st, pos, **kw):
        if pos.get("stage_done") and kill_after == "stage_checkpoint":
            raise Killed
        return real_save(self, model, st, pos, **kw)

    monkeypatch.setattr(TR, "write_json", write_json)
    monkeypatch.setattr(tt.Trainer, "_save_state", save_state)
    with pytest.raises(Killed):
        tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, *extra)))
    monkeypatch.undo()
    assert not C.stage_done(ck, 1)  # stage1.pt exists, but the stage is not recorded as done
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, *extra, "--resume")))
    assert C.stage_done(ck, 1)
    for f in ("stage1.pt", "best_model.pt"):
        a, b = _weights(ref / f), _weights(ck / f)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{f}:{k}")
    ra, rb = (json.loads((d / "train_metrics.json").read_text()) for d in (ref, ck))
    assert ra["best"] == rb["best"] and [h["epoch"] for h in ra["history"]] == [h["epoch"] for h in rb["history"]]


def test_architecture_flags_given_at_stage2_are_named_as_ignored(data_dir, tmp_path, tiny_encoder_dir, caplog):
    """Stage 2 continues stage1.pt's architecture: a different --projection-dim / --tower-sharing on its
    command line is reported, not silently dropped (and not applied)."""
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "1")))
    with caplog.at_level(logging.WARNING, logger="ttsn"):
        tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--max-steps", "1",
                                    "--hard-negatives", "none", "--projection-dim", "8",
                                    "--tower-sharing", "separate")))
    msgs = [r.getMessage() for r in caplog.records if "is ignored at stage 2" in r.getMessage()]
    assert any(m.startswith("--projection-dim 8 is ignored") and m.endswith("which has 0") for m in msgs), msgs
    assert any(m.startswith("--tower-sharing separate is ignored") for m in msgs), msgs
    from two_tower_model import TwoTowerModel
    assert TwoTowerModel.from_pretrained(ck / "stage2.pt").config.projection_dim == 0
    assert not any(m.startswith("--base-model") for m in msgs), msgs  # the same base model, spelled as given


def test_auto_batch_size_rule_and_what_training_uses(data_dir, tmp_path, tiny_encoder_dir):
    """--batch-size auto: the largest of 64/32/16 with >= 32 steps an epoch; the trainer plans with it."""
    assert [TP.auto_batch_size(n) for n in (100, 534, 1023, 1024, 2048, 4_000_000)] == [16, 16, 16, 32, 64, 64]
    assert TP.auto_batch_size(534, world=3) == 18 and TP.auto_batch_size(10**6, world=4) == 64
    assert tt.parse_args(["--stage", "1"]).batch_size == "auto"
    argv = [a for a in _argv(data_dir, tmp_path / "ck", tiny_encoder_dir) if a not in ("--batch-size", "8")]
    m = tt.main(tt.parse_args([*argv, "--stage", "1", "--epochs", "1", "--max-steps", "2"]))
    n_pos = int((pd.read_parquet(data_dir / "training_pairs.parquet")["label"] > 0).sum())
    want = TP.auto_batch_size(n_pos)
    assert want == 16 < n_pos  # a few hundred positives: 16, not the 64 of large data
    cfg = json.loads((tmp_path / "ck" / "train_config.json").read_text())
    assert cfg["batch_size"] == "auto" and cfg["batch_size_used"] == want
    pairs = [json.loads(x)["pairs"] for x in (tmp_path / "ck" / "train_log.jsonl").read_text().splitlines()]
    assert pairs == [want, 2 * want] and m["stages"][0]["steps"] == 2


def test_default_negatives_are_in_batch_at_stage1_and_one_mined_after(data_dir, tmp_path, tiny_encoder_dir):
    """--negatives unset: 0 at stage 1 (in-batch only), 1 at stages 2-3 (the mined hard negative);
    1 at every stage for the losses built on explicit pairs."""
    assert tt.parse_args(["--stage", "1"]).negatives == 0
    assert tt.parse_args(["--stage", "2"]).negatives == 1 and tt.parse_args(["--stage", "3"]).negatives == 1
    assert tt.parse_args(["--stage", "1", "--loss", "combined"]).negatives == 1
    assert tt.parse_args(["--stage", "1", "--negatives", "3"]).negatives == 3
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "2")))
    pairs = pd.read_parquet(data_dir / "training_pairs.parquet")
    mined = pairs[pairs["label"] == 0].head(40)[["query_id", "query", "product_id"]]
    mined.to_parquet(hard_negatives_path(data_dir, 2))
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--max-steps", "2")))
    steps = [json.loads(x) for x in (ck / "train_log.jsonl").read_text().splitlines()]
    assert [("neg_cos" in s) for s in steps] == [False, False, True, True]  # explicit negatives only in stage 2
    assert json.loads((ck / "train_config.json").read_text())["negatives"] == 1


def test_val_loss_is_the_same_in_batch_loss_at_every_stage(data_dir, tmp_path, tiny_encoder_dir, monkeypatch):
    """Validation batches carry no explicit negatives with --loss infonce, whatever the stage trains
    on, so the val losses that pick best_model.pt (--select val_loss, the default) compare."""
    seen = []
    real = TR.plan_epoch

    def plan(data, lengths, batch_size, n_neg, seed, epoch, *a, **k):
        if epoch == 0:
            seen.append(n_neg)
        return real(data, lengths, batch_size, n_neg, seed, epoch, *a, **k)

    monkeypatch.setattr(TR, "plan_epoch", plan)
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "1",
                                "--negatives", "2")))
    assert seen == [0] and tt.parse_args(["--stage", "1"]).select == "val_loss"
    tt.main(tt.parse_args(_argv(data_dir, tmp_path / "c2", tiny_encoder_dir, "--stage", "1", "--max-steps", "1",
                                "--loss", "combined")))
    assert seen == [0, 1]  # losses built on explicit pairs validate with them


def test_the_optimizer_is_fused_adamw_on_cpu_and_updates_like_plain_adamw():
    """The fused kernel is ~5x faster per step on MiniLM's 22M parameters (docs/benchmarks.md);
    the update rule must stay AdamW's."""
    torch.manual_seed(0)
    w0 = torch.randn(300, 40)
    grads = [torch.randn(300, 40) for _ in range(5)]
    out = {}
    for fused in (True, False):
        w = torch.nn.Parameter(w0.clone())
        opt = (train_ops.make_optimizer([w], 1e-2, 0.01, torch.device("cpu")) if fused
               else torch.optim.AdamW([w], lr=1e-2, weight_decay=0.01, foreach=False))
        if fused:
            assert opt.defaults["fused"] is True
        for g in grads:
            w.grad = g.clone()
            opt.step()
        out[fused] = w.detach()
    assert not torch.equal(out[True], w0)
    # the fused kernel rounds in another order: up to ~3e-6 apart after 5 steps, depending on memory
    # alignment (so 1e-6 failed now and then); Adam's coupled decay or no decay is >= 2e-3 apart
    torch.testing.assert_close(out[True], out[False], rtol=0, atol=1e-4)


def test_length_groups_cut_a_batch_where_padding_costs_more_than_a_call():
    from train_data import length_groups
    # equal lengths: one group, whatever the overhead
    assert [g.tolist() for g in length_groups(np.array([7, 7, 7]), 0)] == [[0, 1, 2]]
    # two clusters: 4 short (5) and 2 long (40) texts; padding all to 40 costs 4 * 35 = 140 extra tokens
    lengths = np.array([40, 5, 5, 40, 5, 5])
    assert [sorted(g.tolist()) for g in length_groups(lengths, 100)] == [[1, 2, 4, 5], [0, 3]]
    assert [sorted(g.tolist()) for g in length_groups(lengths, 200)] == [[0, 1, 2, 3, 4, 5]]  # not worth a call
    # exact: never more computed tokens (+ overhead) than one padded batch or than any fixed cut
    rng = np.random.default_rng(0)
    for _ in range(20):
        lens = rng.integers(3, 60, size=int(rng.integers(1, 70)))
        gs = length_groups(lens, 64)
        assert sorted(np.concatenate(gs).tolist()) == list(range(len(lens)))  # each position once
        cost = sum(len(g) * lens[g].max() + 64 for g in gs)
        assert cost <= len(lens) * lens.max() + 64
        srt = np.sort(lens)
        for k in (2, 4):
            fixed = sum(len(c) * c.max() + 64 for c in np.array_split(srt, k) if len(c))
            assert cost <= fixed
        assert all(lens[a].max() <= lens[b].min() for a, b in zip(gs, gs[1:]))  # shortest group first


def test_length_groups_flag_changes_the_calls_not_the_embeddings(data_dir, tmp_path, tiny_encoder_dir, monkeypatch):
    """--length-groups on embeds a batch in several length groups, which mix queries and product
    texts when the towers share weights, with one word-embedding lookup a step; off embeds each side
    in one call. The embeddings are the same up to float rounding (dropout draws its masks per call,
    so training losses are not bit-identical); auto is on for the CPU."""
    import train_data
    from two_tower_model import TwoTowerModel
    monkeypatch.setattr(train_data, "GROUP_OVERHEAD_TOKENS", 0)  # split wherever lengths differ
    sizes, mixed, lookups = [], [], []
    real_embed, real_many, real_stack = TwoTowerModel.embed, TwoTowerModel.embed_batches, train_embed.stack_batch

    def embed(self, batch, side):
        sizes.append(int(batch["input_ids"].shape[0]))
        return real_embed(self, batch, side)

    def embed_batches(self, batches, side):
        sizes.extend(int(b["input_ids"].shape[0]) for b in batches)
        emb = self.query_tower.encoder.get_input_embeddings()
        hook = emb.register_forward_hook(lambda *a: lookups.append(1))
        try:
            return real_many(self, batches, side)
        finally:
            hook.remove()

    def stack_batch(pieces):
        mixed.append(sum(len(rows) > 0 for _, rows in pieces))
        return real_stack(pieces)

    monkeypatch.setattr(TwoTowerModel, "embed", embed)
    monkeypatch.setattr(TwoTowerModel, "embed_batches", embed_batches)
    monkeypatch.setattr(train_embed, "stack_batch", stack_batch)
    calls = {}
    for mode in ("on", "off"):
        sizes.clear(), mixed.clear(), lookups.clear()
        tt.main(tt.parse_args(_argv(data_dir, tmp_path / mode, tiny_encoder_dir, "--stage", "1", "--max-steps", "3",
                                    "--epochs", "1", "--val-batches", "0", "--length-groups", mode)))
        calls[mode] = (list(sizes), list(mixed), len(lookups))
    (on_sizes, on_mixed, on_lookups), (off_sizes, off_mixed, _) = calls["on"], calls["off"]
    assert max(off_sizes) == 8 and not off_mixed  # one call per side of a batch of 8
    assert min(on_sizes) < 8 and len(on_sizes) > len(off_sizes)
    assert 3 <= on_lookups <= 3 * 2  # one lookup per training step (or per call when a step is one group)
    # the trainer's embedding of one batch's three sides, grouped and not, from the same weights
    args = tt.parse_args(_argv(data_dir, tmp_path / "a", tiny_encoder_dir, "--stage", "1"))
    assert args.length_groups == "auto"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    trainer = TR.Trainer(args, 0, 1)
    assert trainer.length_groups is True  # auto on the CPU
    # ... with a oneDNN kernel cache wide enough for the groups' many shapes
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(utils.ONEDNN_CACHE_CAPACITY)
    rng = np.random.default_rng(0)
    texts = trainer.products["product_text"].tolist()[:40]
    # half the "queries" are whole product texts, so that some have a product text's length
    queries = [t if i % 2 else t[:n] for i, (t, n) in enumerate(zip(texts, rng.integers(3, 30, size=len(texts))))]
    for sharing in ("shared", "separate"):
        model = TwoTowerModel.from_pretrained(tmp_path / "off" / "stage1.pt")
        if sharing == "separate":
            model = TwoTowerModel.from_base(str(tiny_encoder_dir), tower_sharing="separate")
        model.eval()
        assert model.towers_shared is (sharing == "shared")
        p_store = train_data.TokenStore(model.tokenizer, texts, 128)
        q_store = train_data.TokenStore(model.tokenizer, queries, 32)
        sides = [(q_store, rng.permutation(40)[:16], "query"), (p_store, rng.permutation(40)[:24], "product"),
                 (p_store, rng.permutation(40)[:10], "product")]
        with torch.no_grad():
            mixed.clear()
            grouped = train_embed.embed_local(model, sides, True, trainer.device)
            assert len(mixed) > 3 and max(mixed) == (3 if sharing == "shared" else 1)  # groups mix the sides
            single = train_embed.embed_local(model, sides, False, trainer.device)
        for g, one, (_, rows, _) in zip(grouped, single, sides):
            assert g.shape == (len(rows), model.config.embedding_dim)
            assert torch.allclose(g, one, atol=1e-5)


def test_embed_batches_looks_words_up_once_and_gives_embed_s_embeddings_and_gradients(tiny_encoder_dir):
    """TwoTowerModel.embed_batches: one word-embedding lookup for several padded batches, and the
    embeddings and the word-embedding gradient of one embed() call per batch."""
    from train_data import TokenStore
    from two_tower_model import TwoTowerModel
    model = TwoTowerModel.from_base(str(tiny_encoder_dir)).eval()
    texts = ["red drill", "cordless hammer drill 20v max", "pvc elbow 1/2 in.", "tarp",
             "white ceiling fan with light kit"]
    store = TokenStore(model.tokenizer, texts, 32)
    batches = [store.batch(np.array([0, 3])), store.batch(np.array([1, 2, 4]))]
    emb = model.query_tower.encoder.get_input_embeddings()
    lookups = []
    hook = emb.register_forward_hook(lambda *a: lookups.append(1))
    many = model.embed_batches(batches, "product")
    hook.remove()
    assert len(lookups) == 1
    sum(m.sum() for m in many).backward()
    grad_many = emb.weight.grad.clone()
    model.zero_grad()
    each = [model.embed(b, "product") for b in batches]
    sum(e.sum() for e in each).backward()
    for m, e in zip(many, each):
        torch.testing.assert_close(m, e, rtol=0, atol=1e-6)
    assert grad_many.abs().sum() > 0
    torch.testing.assert_close(grad_many, emb.weight.grad, rtol=0, atol=1e-6)


def test_focus_rank_keeps_the_positives_ranked_beyond_k(data_dir):
    """StageData(focus=(ranks file, k)) drops exactly the positives ranked 1..k (unranked and -1
    ones stay), and refuses a k beyond the mined --top-k or one that would leave nothing."""
    from train_data import StageData
    from fileio import load_catalog
    cat = load_catalog(data_dir)
    idx = pd.Series(np.arange(len(cat)), index=cat["product_id"].to_numpy())
    pairs = pd.read_parquet(data_dir / "training_pairs.parquet")
    pos = pairs[pairs["label"] > 0].reset_index(drop=True)
    rank = np.where(np.arange(len(pos)) % 4 == 3, -1, np.arange(len(pos)) % 25 + 1)
    ranks = pd.DataFrame({"query_id": pos["query_id"], "product_id": pos["product_id"], "esci_label": pos["esci_label"],
                          "rank": rank.astype(np.int32), "score": 0.0, "top_k": 30}).iloc[:-5]  # 5 unranked
    f = data_dir / "ranks.parquet"
    ranks.to_parquet(f)
    full = StageData(data_dir, "train", 3, [], idx)
    k10 = StageData(data_dir, "train", 3, [], idx, focus=(f, 10))
    near = ranks[(ranks["rank"] >= 1) & (ranks["rank"] <= 10)]
    kept = pos[~pd.MultiIndex.from_frame(pos[["query_id", "product_id"]]).isin(
        pd.MultiIndex.from_frame(near[["query_id", "product_id"]]))]
    got = sorted(zip(k10.query_ids[k10.pos_q].tolist(), cat["product_id"].to_numpy()[k10.pos_p].tolist()))
    assert got == sorted(zip(kept["query_id"].tolist(), kept["product_id"].tolist()))
    assert 0 < len(k10.pos_q) < len(full.pos_q) and full.focus is None
    assert k10.focus == {"rank": 10, "file": str(f), "positives": len(kept), "of": len(full.pos_q)}
    assert (k10.neg_rows == full.neg_rows).all()  # the negatives of every query stay
    with pytest.raises(UserError, match="--top-k 30"):
        StageData(data_dir, "train", 3, [], idx, focus=(f, 31))
    pos.assign(rank=np.int32(1), score=0.0, top_k=30)[list(ranks.columns)].to_parquet(f)
    with pytest.raises(UserError, match="lower --focus-rank"):
        StageData(data_dir, "train", 3, [], idx, focus=(f, 2))


def test_focus_rank_is_stage_3_s_default_and_needs_mined_ranks(data_dir, tmp_path, tiny_encoder_dir):
    assert tt.parse_args(["--stage", "3"]).focus_rank == tt.FOCUS_RANK_STAGE3 == 10
    assert tt.parse_args(["--stage", "1"]).focus_rank == tt.parse_args(["--stage", "2"]).focus_rank == 0
    assert tt.parse_args(["--stage", "3", "--hard-negatives", "none"]).focus_rank == 0
    assert tt.parse_args(["--stage", "2", "--focus-rank", "5"]).focus_rank == 5
    for bad in (["--stage", "3", "--focus-rank", "5", "--hard-negatives", "none"], ["--stage", "3", "--focus-rank", "-1"]):
        with pytest.raises(SystemExit):
            tt.parse_args(bad)
    import hard_negative_mining as hnm
    ck = tmp_path / "ck"
    # run_workflow.sh gives every stage the same flags: stage 1, with no mining model, trains on every positive
    m1 = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "1", "--max-steps", "1",
                                     "--focus-rank", "5")))
    assert m1["stages"][-1]["focus"] is None
    pairs = pd.read_parquet(data_dir / "training_pairs.parquet")
    pairs[pairs["label"] == 0].head(20).to_parquet(hard_negatives_path(data_dir, 2))
    tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--max-steps", "1")))
    hn3 = hard_negatives_path(data_dir, 3)
    hnm.main(hnm.parse_args(["--checkpoint", str(ck / "stage2.pt"), "--data-dir", str(data_dir), "--output",
                             str(hn3), "--backend", "torch"]))
    ranks = pd.read_parquet(hn3.with_name("hard_negatives_stage3_positive_ranks.parquet"))
    steps = {}
    for k in ("0", "50"):
        out = tmp_path / f"ck{k}"
        shutil.copytree(ck, out)
        m = tt.main(tt.parse_args(_argv(data_dir, out, tiny_encoder_dir, "--stage", "3", "--epochs", "1",
                                        "--focus-rank", k)))
        steps[k] = m["stages"][-1]
    near = int(((ranks["rank"] >= 1) & (ranks["rank"] <= 50)).sum())
    assert near > 0 and steps["0"]["focus"] is None
    assert steps["50"]["focus"]["positives"] == steps["50"]["focus"]["of"] - near
    assert steps["50"]["steps"] < steps["0"]["steps"]  # fewer positives, fewer batches
    hn3.with_name("hard_negatives_stage3_positive_ranks.parquet").unlink()
    with pytest.raises(UserError, match="positive ranks.*--focus-rank 0"):
        tt.main(tt.parse_args(_argv(data_dir, tmp_path / "ck50", tiny_encoder_dir, "--stage", "3", "--epochs", "1",
                                    "--overwrite")))


def test_pseudo_queries_add_stage_1_positives_and_change_training(data_dir, tmp_path, tiny_encoder_dir):
    """--pseudo-queries N: stage 1 trains on the judged positives plus up to N title-span positives."""
    ref, ck = tmp_path / "ref", tmp_path / "ck"
    one = ["--stage", "1", "--max-steps", "1", "--epochs", "1"]
    m0 = tt.main(tt.parse_args(_argv(data_dir, ref, tiny_encoder_dir, *one)))
    m1 = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, *one, "--pseudo-queries", "40")))
    s0, s1 = m0["stages"][0], m1["stages"][0]
    assert s0["pseudo_queries"] == 0 and 20 <= s1["pseudo_queries"] <= 40  # a few titles have no 2-word span
    assert s1["positives"] == s0["positives"] + s1["pseudo_queries"]
    assert _first_losses(ck)[0] != pytest.approx(_first_losses(ref)[0], abs=1e-6)  # other batches
    assert torch.load(ck / "stage1.pt", weights_only=True)["config"]  # a normal checkpoint
    pairs = pd.read_parquet(data_dir / "training_pairs.parquet")
    pairs[pairs["label"] == 0].head(20).to_parquet(hard_negatives_path(data_dir, 2))
    m2 = tt.main(tt.parse_args(_argv(data_dir, ck, tiny_encoder_dir, "--stage", "2", "--max-steps", "1",
                                     "--pseudo-queries", "40")))
    assert m2["stages"][-1]["stage"] == 2 and m2["stages"][-1]["pseudo_queries"] == 0  # stage 1 only
    with pytest.raises(SystemExit):
        tt.parse_args(["--stage", "1", "--pseudo-queries", "-1"])
