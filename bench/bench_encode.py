"""Benchmark: catalog-encoding backends against plain `SentenceTransformer.encode` (fp32 defaults),
in one run, for speed and for retrieval quality.

Speed: products/s on the same --n product texts of the `small` sample catalog (--rounds rounds,
round-robin, median) for
  st_fp32          SentenceTransformer("all-MiniLM-L6-v2").encode, batch 32, fp32 (the reference)
  torch_fp32       TwoTowerModel.encode_products forced to fp32
  torch            TwoTowerModel.encode_products as the suite runs it (bf16 autocast where native)
  openvino_f32     backends.OpenVINOTower, fp32      (when openvino is installed)
  openvino_bf16    backends.OpenVINOTower, bf16      (when installed and the CPU has native bf16)
  onnx_f32         backends.OnnxTower: the export_model.py --format onnx graph in ONNX Runtime, fp32
  onnx_int8        the same graph with ONNX Runtime dynamic int8 weights (export_model.py --quantize int8)
with each one's cosine to torch_fp32 (mean, min).

Quality: for the sample catalog's test queries (and ../shared/real_esci re-split 0.5 when present),
the whole catalog is encoded by each backend, queries by torch fp32, and Recall@10 / NDCG@10
(relevant = E, ESCI gains; metrics.evaluate_run) are compared with torch fp32: the goal is within 1%
(relative). The CPU flags (AVX2 / AVX-512 / AVX512_BF16 / AMX) are recorded with every figure.

Example (~5 min on 2 cores):
    python bench/bench_encode.py --n 2000 --out bench/out/encode.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import ROOT, cpu_flags, write_result  # noqa: E402  (puts the project on sys.path)

from backends import OnnxTower, OpenVINOTower, onnx_available, openvino_available  # noqa: E402
from metrics import evaluate_run  # noqa: E402
from sample_catalog import make_sample_catalog  # noqa: E402
from two_tower_model import TwoTowerModel  # noqa: E402
from cli import SAMPLE_SEED, add_alias, add_version_arg, run_cli  # noqa: E402
from paths import ESCI_GAINS, EXAMPLES_FILE, PRODUCTS_FILE  # noqa: E402
from utils import bf16_supported, build_product_text, resolve_model_path  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REAL_ESCI = ROOT.parent / "shared" / "real_esci"


def load_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    with tempfile.TemporaryDirectory() as d:
        make_sample_catalog(Path(d), "small", seed=seed, n_products=max(n, 4000))
        pr = pd.read_parquet(Path(d) / PRODUCTS_FILE)
        ex = pd.read_parquet(Path(d) / EXAMPLES_FILE)
    texts = [build_product_text(r.product_title, r.product_brand, r.product_color, r.product_bullet_point)
             for r in pr.head(n).itertuples()]
    return texts, ex["query"].drop_duplicates().tolist()


def encoders(st, model_fp32: TwoTowerModel, model: TwoTowerModel) -> dict:
    """name -> f(texts) -> (n, d) normalised embeddings, for every backend available here."""
    out = {"st_fp32": lambda t: st.encode(t, batch_size=32, normalize_embeddings=True),
           "torch_fp32": lambda t: model_fp32.encode_products(t),
           "torch": lambda t: model.encode_products(t)}
    if openvino_available():
        ov32 = OpenVINOTower(model_fp32, precision="f32")
        out["openvino_f32"] = lambda t: ov32.encode(t, 64)
        if bf16_supported(torch.device("cpu")):
            ov16 = OpenVINOTower(model_fp32, precision="bf16")
            out["openvino_bf16"] = lambda t: ov16.encode(t, 64)
    if onnx_available():
        ort32, ort8 = OnnxTower(model_fp32), OnnxTower(model_fp32, quantize="int8")
        out["onnx_f32"] = lambda t: ort32.encode(t, 64)
        out["onnx_int8"] = lambda t: ort8.encode(t, 64)
    return out


def prepared(raw: Path | None, work: Path, resplit: float | None) -> Path:
    """Prepared tables of the sample catalog (raw None) or of an ESCI-format directory."""
    import prepare_training_data as prep
    if raw is None:
        raw = work / "raw"
        make_sample_catalog(raw, "small", seed=SAMPLE_SEED)
    data = work / "data"
    argv = ["--raw-dir", str(raw), "--data-dir", str(data), "--quiet"]
    if resplit:
        argv += ["--resplit-queries", str(resplit)]
    prep.main(prep.parse_args(argv))
    return data


def retrieval_quality(data: Path, encs: dict, model_fp32: TwoTowerModel) -> dict:
    """Recall@10 / NDCG@10 of the test queries over the whole catalog, per backend (queries: torch fp32)."""
    products = pd.read_parquet(data / "products_clean.parquet", columns=["product_id", "product_text"])
    gt = pd.read_parquet(data / "ground_truth.parquet")
    test = gt[gt["split"] == "test"]
    qrels = {q: dict(zip(g["product_id"], g["esci_label"])) for q, g in test.groupby("query_id")}
    queries = test.drop_duplicates("query_id")
    q_emb = model_fp32.encode_queries(queries["query"].tolist())
    ids = products["product_id"].to_numpy()
    out = {"queries": int(len(queries)), "products": len(products)}
    for name, f in encs.items():
        t = time.perf_counter()
        emb = f(products["product_text"].tolist())
        secs = time.perf_counter() - t
        top = np.argsort(-(q_emb @ emb.T), axis=1)[:, :10]
        run = {q: ids[row].tolist() for q, row in zip(queries["query_id"], top)}
        means, _ = evaluate_run(run, qrels, ("E",), ESCI_GAINS, ks=(10,))
        out[name] = {"recall@10": round(means["recall@10"], 4), "ndcg@10": round(means["ndcg@10"], 4),
                     "catalog_products_per_s": round(len(products) / secs, 1)}
    ref = out["torch_fp32"]
    for name in encs:
        for m in ("recall@10", "ndcg@10"):
            out[name][f"{m}_rel_diff"] = round((out[name][m] - ref[m]) / ref[m], 4) if ref[m] else None
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("--n", type=int, default=2000, help="product texts for the speed runs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sample-seed", type=int, default=SAMPLE_SEED, help="which sample catalog the texts come from")
    add_alias(p, "--seed", "--sample-seed")
    p.add_argument("--no-quality", action="store_true", help="speed only")
    p.add_argument("--real-dir", type=Path, default=REAL_ESCI, help="real ESCI extract for the quality check, if present")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "encode.json")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    from sentence_transformers import SentenceTransformer
    texts, _ = load_texts(args.n, args.sample_seed)
    st = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    model_fp32 = TwoTowerModel.from_pretrained(MODEL).eval()
    model_fp32.encode_dtype = torch.float32
    model = TwoTowerModel.from_pretrained(MODEL).eval()
    encs = encoders(st, model_fp32, model)
    for f in encs.values():  # warm-up (and OpenVINO's first-inference set-up)
        f(texts[:64])
    rates: dict[str, list[float]] = {k: [] for k in encs}
    embs = {}
    for _ in range(args.rounds):
        for k, f in encs.items():
            t = time.perf_counter()
            embs[k] = f(texts)
            rates[k].append(len(texts) / (time.perf_counter() - t))
    ref = embs["torch_fp32"]
    med = {k: statistics.median(v) for k, v in rates.items()}
    res = {
        "cpu": cpu_flags(), "threads": torch.get_num_threads(), "n_products": len(texts),
        "mean_tokens": round(float(np.mean([len(x) for x in st.tokenizer(texts)["input_ids"]])), 1),
        "products_per_s": {k: round(v, 1) for k, v in med.items()},
        "products_per_s_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "speedup_vs_st_fp32": {k: round(v / med["st_fp32"], 2) for k, v in med.items()},
        "cosine_vs_torch_fp32": {k: {"mean": round(float((e * ref).sum(1).mean()), 6),
                                     "min": round(float((e * ref).sum(1).min()), 6)} for k, e in embs.items()},
    }
    if not args.no_quality:
        with tempfile.TemporaryDirectory() as d:
            res["quality_sample"] = retrieval_quality(prepared(None, Path(d) / "s", None), encs, model_fp32)
            if (args.real_dir / EXAMPLES_FILE).is_file():
                res["quality_real_esci"] = retrieval_quality(prepared(args.real_dir, Path(d) / "r", 0.5), encs,
                                                             model_fp32)
    return write_result(args.out, res)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
