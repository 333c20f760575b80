"""Catalog-encoding backends: which engine runs the product tower when a phase embeds the catalog
(reindexing, mining; evaluation and the demo search the indices reindexing built).

- `torch`: the model itself (bf16 autocast where the device runs bf16 natively, else fp32).
- `openvino`: the product tower converted once per run with OpenVINO's own PyTorch converter
  (`openvino.convert_model`, no hand-written graph) and compiled for the CPU, in bf16 where the CPU
  has native bf16 (AVX512_BF16 / AMX), else fp32. Tokenisation, prompts, length-sorted batching and
  max lengths are the model's own (`TwoTowerModel.padded_batches`), so only the arithmetic differs.
- `onnx`: the product tower exported once per run by PyTorch's own ONNX exporter (onnx_export.py,
  the graph `export_model.py --format onnx` writes) and run by ONNX Runtime's CPU provider, fp32.
- `auto` (default): `openvino` on an x86 CPU with AVX2 or better when the package is installed,
  `torch` otherwise (GPUs, other CPUs). The rule comes from `bench/bench_encode.py` and phase-scale
  A/Bs (docs/benchmarks.md, "Catalog encoding"): with native bf16 OpenVINO bf16 is several times
  faster than torch with Recall@10 / NDCG@10 within 1% of torch fp32; on an AVX2-only CPU
  OpenVINO fp32 encodes 1.1-1.2x as many products a second as torch fp32 since the throughput
  hint below (1.08x and 1.16x for a whole Home Depot catalog, 1.23x on the sample's texts), with
  the same embeddings (cosine >= 0.9999997).

Each backend's embeddings are cached separately (`backend_key` is part of the cache key), so a
catalog encoded by one is never served as the other's.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np

from utils import UserError, bf16_supported, log

BACKENDS = ("auto", "torch", "openvino", "onnx")


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def onnx_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript", "onnx"))


def resolve_backend(name: str, device) -> str:
    """The concrete backend for `name` on `device` ('torch' or 'openvino')."""
    if name not in BACKENDS:
        raise UserError(f"--backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "torch":
        return "torch"
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if name == "onnx":
        if not on_cpu:
            raise UserError(f"--backend onnx runs on the CPU only, not on {device}; use --backend torch")
        if not onnx_available():
            raise UserError("--backend onnx needs onnxruntime and onnxscript: pip install -r requirements.txt")
        return "onnx"
    if name == "openvino":
        if not on_cpu:
            raise UserError(f"--backend openvino runs on the CPU only, not on {device}; use --backend torch")
        if not openvino_available():
            raise UserError("--backend openvino needs the openvino package: pip install -r requirements.txt")
        return "openvino"
    return "openvino" if on_cpu and openvino_available() and (bf16_supported(device) or x86_simd()) else "torch"


def x86_simd() -> bool:
    """The CPU is x86 with AVX2 or AVX-512, where OpenVINO fp32 was measured faster than torch."""
    import torch
    return torch.backends.cpu.get_cpu_capability().startswith(("AVX2", "AVX512"))


def backend_key(backend: str, device) -> str:
    """What distinguishes this backend's catalog embeddings in the cache ('' for torch, the default)."""
    if backend == "torch":
        return ""
    if backend == "onnx":
        return "onnx-f32"
    return f"openvino-{'bf16' if bf16_supported(device) else 'f32'}"


class OpenVINOTower:
    """The product tower compiled by OpenVINO: `encode(texts, batch_size)` -> (n, d) float32.

    Compiled for throughput: the plugin's streams (2 of one thread each on 2 cores) each run a batch,
    fed by an `AsyncInferQueue` while this thread tokenises and pads the next ones. On Home Depot
    titles that encodes 1.11x as many products a second as one synchronous request with the latency
    hint (docs/benchmarks.md, "Catalog encoding"); the embeddings are the same."""

    def __init__(self, model, precision: str | None = None):
        import openvino as ov
        import torch
        self.model = model
        self.precision = precision or ("bf16" if bf16_supported(torch.device("cpu")) else "f32")
        tower = model.product_tower.eval()
        example = model.tokenize(["an example product", "a second, longer example product text"], "product")
        with torch.no_grad():
            ov_model = ov.convert_model(tower, example_input=(example["input_ids"], example["attention_mask"]))
        self.compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": self.precision,
                                                                  "PERFORMANCE_HINT": "THROUGHPUT"})
        self.jobs = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._queue = ov.AsyncInferQueue(self.compiled, self.jobs)
        log.info("product tower compiled with OpenVINO (%s, %d parallel requests)", self.precision, self.jobs)

    def encode(self, texts, batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.model.config.embedding_dim), dtype=np.float32)
        filled = [0]

        def done(request, rows):  # runs on OpenVINO's thread when a batch finishes
            out[rows] = request.get_output_tensor(0).data
            filled[0] += len(rows)

        self._queue.set_callback(done)
        for rows, ids, att in self.model.padded_batches(texts, "product", batch_size):
            self._queue.start_async({0: ids, 1: att}, userdata=rows)  # inputs are copied: ids may go
        self._queue.wait_all()
        if filled[0] != len(texts):  # an error inside the callback is not raised here: never return np.empty's bytes
            raise RuntimeError(f"OpenVINO returned {filled[0]} of {len(texts)} product embeddings")
        return out


class OnnxTower:
    """The product tower exported to ONNX (a temporary file) and run by ONNX Runtime: fp32, or with
    quantize="int8" ONNX Runtime's dynamic int8 weights (measured by bench_encode.py, not offered as
    a backend: it loses retrieval quality)."""

    def __init__(self, model, quantize: str | None = None):
        import tempfile

        import onnx_export
        self.model = model
        self._dir = tempfile.TemporaryDirectory(prefix="ttsn_onnx_")  # removed with this object
        path = f"{self._dir.name}/product.onnx"
        onnx_export.export_tower(model.product_tower, model.tokenizer, path)
        if quantize == "int8":
            onnx_export.quantize_int8(path, path.replace(".onnx", ".int8.onnx"))
            path = path.replace(".onnx", ".int8.onnx")
        self.session = onnx_export.OnnxSession(path)
        log.info("product tower exported to ONNX and loaded in ONNX Runtime (%s)", quantize or "fp32")

    def encode(self, texts, batch_size: int = 64) -> np.ndarray:
        return self.model._encode(list(texts), "product", batch_size, False, run=self.session.run)


def product_encoder(model, backend: str) -> Callable[[list[str], int], np.ndarray]:
    """A function (texts, batch_size) -> product embeddings, run by the given concrete backend."""
    if backend == "openvino":
        return OpenVINOTower(model).encode
    if backend == "onnx":
        return OnnxTower(model).encode
    return lambda texts, batch_size: model.encode_products(texts, batch_size=batch_size)
