"""A tower as an ONNX graph, and running it with ONNX Runtime: what `export_model.py --format onnx`
writes and what the catalog-encode backend `--backend onnx` (backends.py) runs.

The graph is exported by PyTorch's own exporter (`torch.onnx.export(..., dynamo=True)`, which needs
the onnxscript package; the older TorchScript exporter is not used: it gave cosine 0.93 on MiniLM).
Dynamic batch and sequence axes. Inputs and outputs, named as sentence-transformers' ONNX exports
name them, so serving engines find them by their default names:

    input_ids (batch, seq) int64, attention_mask (batch, seq) int64[, token_type_ids (batch, seq)
    int64, for encoders that take them, e.g. BERT]
    token_embeddings (batch, seq, hidden)  the encoder's last hidden states: for engines that pool
                                           themselves (OpenSearch ML Commons, Vespa, FastEmbed)
    sentence_embedding (batch, dim)        mean pooling over the attention mask, the projection MLP
                                           if any, L2 normalisation: exactly what the tower returns

`tokenizer_json(tokenizer, max_len)` is the tokenizer as one `tokenizer.json` with truncation at the
tower's max length (prompts are not part of it: the export's JSON names them, and callers prepend
them, as sentence-transformers and Vespa's `prepend` do).

Example (CPU, ~30 s):
    python -c "import onnx_export as ox; from two_tower_model import TwoTowerModel as T; \\
               m = T.from_pretrained('sentence-transformers/all-MiniLM-L6-v2'); \\
               ox.export_tower(m.product_tower, m.tokenizer, '/tmp/product.onnx')"
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import UserError, log

OPSET = 18
OUTPUTS = ("token_embeddings", "sentence_embedding")


def uses_token_type_ids(tower, tokenizer) -> bool:
    """Does the encoder take token_type_ids (and the tokenizer make them)? BERT yes, DistilBERT no."""
    import inspect
    return ("token_type_ids" in getattr(tokenizer, "model_input_names", ())
            and "token_type_ids" in inspect.signature(tower.encoder.forward).parameters)


class _Graph(nn.Module):
    """The tower with both outputs; token_type_ids go to the encoder (all zeros in a single-text
    input, as the towers feed them implicitly)."""

    def __init__(self, tower, with_type_ids: bool):
        super().__init__()
        self.tower, self.with_type_ids = tower, with_type_ids

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {"token_type_ids": token_type_ids} if self.with_type_ids else {}
        hidden = self.tower.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
        emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (b, h): the towers' mean_pool
        if self.tower.projection is not None:
            emb = self.tower.projection(emb)  # (b, d)
        return hidden, F.normalize(emb.float(), dim=-1)


def export_tower(tower, tokenizer, path: str | os.PathLike, opset: int = OPSET) -> dict:
    """Write `tower` as an ONNX graph to `path` (fp32, on the CPU); returns its input/output names."""
    from torch.export import Dim
    if tower.encoder.config.model_type not in ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet",
                                               "deberta-v2", "electra", "albert", "nomic_bert", "modernbert"):
        log.warning("exporting a %s encoder to ONNX has not been tested here", tower.encoder.config.model_type)
    with_type = uses_token_type_ids(tower, tokenizer)
    graph = _Graph(tower, with_type).cpu().eval()
    ex = tokenizer(["an example product text", "a second, longer example text of a product"], padding=True,
                   return_tensors="pt")
    args = (ex["input_ids"], ex["attention_mask"]) + ((torch.zeros_like(ex["input_ids"]),) if with_type else ())
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_type else [])
    batch, seq = Dim("batch", min=1), Dim("sequence", min=1, max=4096)
    dyn = tuple({0: batch, 1: seq} for _ in names)
    for noisy in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            program = torch.onnx.export(graph, args, dynamo=True, input_names=names, output_names=list(OUTPUTS),
                                        dynamic_shapes=dyn, opset_version=opset, verbose=False)
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx and onnxscript packages ({e}): "
                        f"pip install -r requirements.txt") from None
    program.save(str(path))
    return {"inputs": names, "outputs": list(OUTPUTS), "opset": opset}


def tokenizer_json(tokenizer, max_len: int) -> str:
    """The fast tokenizer as tokenizer.json text: truncation at max_len tokens, no padding."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("ONNX export needs a fast (tokenizers-based) tokenizer; this model has a slow one")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(backend.to_str())
    tok.enable_truncation(max_length=max_len)
    tok.no_padding()
    return tok.to_str(pretty=True)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """ONNX Runtime dynamic int8 quantisation of the weights (MatMul/Gemm), per channel: measured by
    bench/bench_encode.py and not offered for export (retrieval quality moved by more than 1%)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


class OnnxSession:
    """An exported tower run by ONNX Runtime on the CPU: `run(input_ids, attention_mask)` -> (b, dim)
    sentence embeddings (the `_encode(run=...)` hook of TwoTowerModel)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        return np.asarray(self.session.run(["sentence_embedding"], feed)[0], dtype=np.float32)


def encode_with_tokenizer_json(model_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                               texts: Sequence[str], prompt: str = "") -> np.ndarray:
    """Embeddings of texts with nothing but an exported graph and its tokenizer.json: the way a
    serving process without this project (or without PyTorch) would run the export."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_path))
    enc = tok.encode_batch([prompt + t for t in texts])
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), np.int64)
    att = np.zeros((len(enc), width), np.int64)
    for i, e in enumerate(enc):
        ids[i, :len(e.ids)], att[i, :len(e.ids)] = e.ids, 1
    return OnnxSession(model_path).run(ids, att)


def read_export_config(directory: str | os.PathLike) -> dict:
    p = Path(directory) / "ttsn_onnx.json"
    if not p.is_file():
        raise UserError(f"{directory} is not an ONNX export of this suite (no ttsn_onnx.json)")
    return json.loads(p.read_text())


# ---------------------------------------------------------------------------------------------
# The export directory (export_model.py --format onnx)
# ---------------------------------------------------------------------------------------------
EXPORT_FORMAT = "ttsn-onnx"


def export_layout(model) -> dict:
    """Which graph and tokenizer file each side uses: one graph per distinct set of weights (shared
    towers: model.onnx; separate: query.onnx + product.onnx), one tokenizer.json per distinct max
    length (tokenizer.json at the product length, query_tokenizer.json when the query's differs)."""
    cfg = model.config
    shared = cfg.tower_sharing == "shared"
    q_tok = "tokenizer.json" if cfg.query_max_len == cfg.product_max_len else "query_tokenizer.json"
    return {"query": {"model": "model.onnx" if shared else "query.onnx", "tokenizer": q_tok,
                      "max_length": cfg.query_max_len, "prompt": cfg.query_prompt},
            "product": {"model": "model.onnx" if shared else "product.onnx", "tokenizer": "tokenizer.json",
                        "max_length": cfg.product_max_len, "prompt": cfg.product_prompt}}


def write_export(model, out: Path) -> dict:
    """Write the graphs, tokenizers and ttsn_onnx.json of `model` into the (empty) directory `out`."""
    from fileio import file_sha256
    model = model.cpu().eval()
    layout = export_layout(model)
    io = {}
    for side, spec in layout.items():
        tower = model.query_tower if side == "query" else model.product_tower
        target = out / spec["model"]
        if not target.exists():
            io = export_tower(tower, model.tokenizer, target)
        tok = out / spec["tokenizer"]
        if not tok.exists():
            tok.write_text(tokenizer_json(model.tokenizer, spec["max_length"]))
    cfg = model.config
    meta = {"format": EXPORT_FORMAT, "version": 1, "fingerprint": model.fingerprint(), "base_model": cfg.base_model,
            "model_type": model.query_tower.encoder.config.model_type, "towers": layout, **io,
            "pooling": "mean", "normalize": True, "projection_dim": cfg.projection_dim,
            "embedding_dimension": cfg.embedding_dim, "similarity": "dot product of sentence_embedding (cosine)",
            "engine_pooling_matches": cfg.projection_dim == 0,
            "progress": model.progress or None}
    meta["files"] = {p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.is_file()}
    (out / "ttsn_onnx.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
