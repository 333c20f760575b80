"""Export a trained two-tower checkpoint for serving: a standard sentence-transformers model
directory (--format sentence-transformers, the default) or ONNX graphs (--format onnx).

`SentenceTransformer(OUTPUT)` then loads it with no import of this project and embeds exactly as
the towers do: same tokenizer, max lengths, prompts, mean pooling, projection MLP and L2
normalisation. Shared towers with one max length become a plain model (Transformer -> Pooling ->
[Dense, Dense] -> Normalize). Separate towers, or different query/product max lengths, become a
sentence-transformers `Router` with a "query" and a "document" route, so `encode_query` and
`encode_document` pick the right tower (`encode` alone uses the document route). Prompts are stored
as the model's "query" / "document" prompts, which `encode_query` / `encode_document` apply.
`--plain` forces one plain model for shared towers (queries are then truncated at the product max
length instead of their own, which only changes queries longer than the query max length).

--format onnx (onnx_export.py) writes model.onnx (shared towers; query.onnx + product.onnx for
separate ones), tokenizer.json (truncation at the product max length; query_tokenizer.json when the
query max length differs) and ttsn_onnx.json (which graph and tokenizer each side uses, max lengths,
prompts, pooling, normalisation, input/output names, checksums). Each graph takes input_ids,
attention_mask (and token_type_ids for BERT-like encoders) with dynamic batch and sequence axes and
returns token_embeddings and sentence_embedding (pooled, projected, L2-normalised: the tower's
output). ONNX Runtime, OpenSearch ML Commons, Vespa and FastEmbed load it (README "Serving").
No int8 variant is offered: ONNX Runtime's dynamic int8 moved retrieval quality by more than 1%
(docs/benchmarks.md).

A model card (README.md) records the base model, the checkpoint's training progress and config,
the training data statistics and the evaluation table of --report when it exists.

Reads: --checkpoint (.pt or checkpoint directory), optional --report (data/eval/report.json),
       optional train_config.json next to the checkpoint, optional DATA_DIR/prepare_stats.json.
Writes: --output DIR (built in a temporary directory next to it, then renamed; an existing DIR is
        replaced only with --overwrite), OUTPUT/ttsn_export.json (what was exported, checksums).

Example (CPU, after the workflow or `python train_two_tower.py --stage 1 --max-steps 2 ...`):
    python export_model.py --checkpoint checkpoints/best_model.pt --output models/ttsn-minilm
    python export_model.py --checkpoint checkpoints/best_model.pt --format onnx --output models/ttsn-onnx
    python -c "from sentence_transformers import SentenceTransformer as S; m = S('models/ttsn-minilm'); \\
               print(m.encode_query(['usb c cable']) @ m.encode_document(['Anker USB-C Cable 6ft']).T)"
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch.nn as nn

from two_tower_model import Tower, TwoTowerModel
from cli import add_common_args, refuse_overwrite, run_cli, setup_logging
from fileio import atomic_dir, file_sha256, read_json, require_writable, write_json
from paths import DEFAULT_DATA_DIR, eval_dir
from utils import UserError, log


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True, help="trained checkpoint (.pt or directory)")
    p.add_argument("--output", type=Path, required=True, help="the model directory to write")
    p.add_argument("--format", choices=["sentence-transformers", "onnx"], default="sentence-transformers",
                   help="a sentence-transformers directory (default) or ONNX graphs + tokenizer.json")
    p.add_argument("--report", type=Path, default=None,
                   help="evaluation report for the model card (default: DATA_DIR/eval/report.json when present)")
    p.add_argument("--plain", action="store_true",
                   help="shared towers: one plain model even when the query and product max lengths differ")
    add_common_args(p, checkpoint_dir=False, seed=False, overwrite="the --output directory")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Building the sentence-transformers model
# ---------------------------------------------------------------------------------------------
def tower_modules(tower: Tower, tokenizer, max_len: int, work: Path) -> list:
    """The sentence-transformers modules that compute what `tower` computes (without the final
    normalisation): Transformer(max_seq_length) -> Pooling(mean) -> [Dense(GELU), Dense]."""
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    work.mkdir(parents=True)
    tower.encoder.save_pretrained(work)
    tokenizer.save_pretrained(work)
    hidden = int(tower.encoder.config.hidden_size)
    mods = [Transformer(str(work), max_seq_length=max_len), Pooling(hidden, "mean")]
    if tower.projection is not None:
        lin1, act, lin2 = tower.projection
        if type(act) is not nn.GELU or act.approximate != "none":
            raise UserError(f"cannot export projection activation {act!r} (expected GELU)")
        mods += [Dense(lin1.in_features, lin1.out_features, activation_function=nn.GELU(),
                       init_weight=lin1.weight.detach().clone(), init_bias=lin1.bias.detach().clone()),
                 Dense(lin2.in_features, lin2.out_features, activation_function=nn.Identity(),
                       init_weight=lin2.weight.detach().clone(), init_bias=lin2.bias.detach().clone())]
    return mods


def needs_router(model: TwoTowerModel, plain: bool = False) -> bool:
    """Separate towers always need a Router; shared towers only for different max lengths."""
    cfg = model.config
    if cfg.tower_sharing == "separate":
        return True
    return cfg.query_max_len != cfg.product_max_len and not plain


def to_sentence_transformer(model: TwoTowerModel, work: Path, plain: bool = False):
    """A SentenceTransformer that embeds like `model` (see the module docstring)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Router
    model = model.cpu().eval()
    cfg = model.config
    prompts = {k: v for k, v in (("query", cfg.query_prompt), ("document", cfg.product_prompt)) if v}
    if needs_router(model, plain):
        router = Router.for_query_document(
            query_modules=tower_modules(model.query_tower, model.tokenizer, cfg.query_max_len, work / "query"),
            document_modules=tower_modules(model.product_tower, model.tokenizer, cfg.product_max_len,
                                           work / "document"))
        modules = [router, Normalize()]
    else:
        modules = [*tower_modules(model.product_tower, model.tokenizer, cfg.product_max_len, work / "shared"),
                   Normalize()]
    return SentenceTransformer(modules=modules, device="cpu", prompts=prompts or None,
                               similarity_fn_name="cosine")


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------
def model_card(model: TwoTowerModel, checkpoint: Path, router: bool, report: dict | None,
               train_config: dict | None, data_stats: dict | None) -> str:
    """README.md of the exported model: what it is, how to load it, how it was trained and scored."""
    cfg = model.config
    usage = ("model.encode_query(queries)   # query route\nmodel.encode_document(products)  # product route"
             if router or cfg.query_prompt or cfg.product_prompt else
             "model.encode(queries)  # queries and products alike")
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             f"base_model: {cfg.base_model}", "tags: [sentence-transformers, product-search, esci, two-tower]", "---",
             "", "# Two-tower product-search model", "",
             f"A query tower and a product tower fine-tuned from `{cfg.base_model}` on ESCI-format "
             "query-product judgements (contrastive learning with iterative hard-negative mining), "
             "exported from a two-tower checkpoint by `export_model.py`.", "",
             "```python", "from sentence_transformers import SentenceTransformer",
             "model = SentenceTransformer(\"PATH\")", usage, "```", "",
             "| setting | value |", "| --- | --- |",
             f"| towers | {cfg.tower_sharing} ({'Router: query / document routes' if router else 'one plain model'}) |",
             f"| max length (tokens) | queries {cfg.query_max_len}, products {cfg.product_max_len} |",
             f"| prompts | query {cfg.query_prompt!r}, product {cfg.product_prompt!r} |",
             f"| embedding | {cfg.embedding_dim} dimensions, L2-normalised, cosine similarity |",
             f"| projection MLP | {cfg.projection_dim or 'none'} |",
             f"| checkpoint | `{checkpoint.name}`, fingerprint {model.fingerprint()} |",
             f"| training progress | {json.dumps(model.progress) if model.progress else 'not recorded'} |"]
    if train_config:
        keep = ("loss", "symmetric", "lr", "batch_size", "batch_size_used", "temperature", "negatives",
                "hard_negatives", "label_weights", "select", "epochs", "seed")
        lines += ["", "## Training configuration", "", "```json",
                  json.dumps({k: train_config[k] for k in keep if k in train_config}, indent=1), "```"]
    if data_stats:
        lines += ["", "## Training data", "",
                  f"Catalog: {data_stats.get('catalog_products', '?'):,} products; queries per split: "
                  f"{json.dumps(data_stats.get('queries', {}))}; labels: {json.dumps(data_stats.get('labels', {}))}; "
                  f"locale {data_stats.get('locale', '?')}."]
    if report and report.get("markdown"):
        lines += ["", "## Evaluation (held-out test queries)", "", report["markdown"].strip()]
    elif report:
        lines += ["", "## Evaluation (held-out test queries)", "", "```json",
                  json.dumps(report.get("systems", report), indent=1)[:4000], "```"]
    return "\n".join(lines) + "\n"


def _optional_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        log.warning("ignoring %s for the model card (%s)", path, e)
        return None


def main(args: argparse.Namespace) -> Path:
    setup_logging(args.log_level)
    out: Path = args.output
    refuse_overwrite(args, out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose another --output")
    model = TwoTowerModel.from_pretrained(args.checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    require_writable(out.parent, "--output")
    ck = Path(args.checkpoint)
    with atomic_dir(out) as tmp:  # built aside, swapped in at the end: never half-written
        if args.format == "onnx":
            import onnx_export
            meta = onnx_export.write_export(model, tmp)
            log.info("exported %s -> %s (ONNX: %s)", ck, out, ", ".join(sorted(meta["files"])))
            return out
        router = needs_router(model, args.plain)
        with tempfile.TemporaryDirectory() as work:
            st = to_sentence_transformer(model, Path(work), args.plain)
            st.save(str(tmp))
        report_path = args.report or eval_dir(args.data_dir or DEFAULT_DATA_DIR) / "report.json"
        report = _optional_json(report_path)
        md = report_path.with_suffix(".md")
        if report is not None and md.is_file():
            report = {**report, "markdown": md.read_text()}
        train_config = _optional_json((ck if ck.is_dir() else ck.parent) / "train_config.json")
        stats = _optional_json(Path(args.data_dir or DEFAULT_DATA_DIR) / "prepare_stats.json")
        (tmp / "README.md").write_text(model_card(model, ck, router, report, train_config, stats))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / "ttsn_export.json", {
            "checkpoint": str(ck), "fingerprint": model.fingerprint(), "router": router,
            "config": {k: v for k, v in model.config.to_dict().items() if k != "encoder_config"},
            "files": {str(p.relative_to(tmp)): file_sha256(p) for p in files}})
    log.info("exported %s -> %s (%s)", args.checkpoint, out, "Router: query/document routes" if router else "plain")
    return out


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
