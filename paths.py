"""Where every artifact lives, and the constants of the ESCI data: one helper per path, used by
every script and by run_workflow.sh (`python paths.py paths DATA_DIR CHECKPOINT_DIR` prints them
as shell assignments; `python paths.py version` prints the suite's version).

Example:
    python paths.py paths data checkpoints
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Paths and dataset constants
# ---------------------------------------------------------------------------------------------
DEFAULT_DATA_DIR = Path("data")
DEFAULT_CHECKPOINT_DIR = Path("checkpoints")
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# One helper per artifact path: every script and run_workflow.sh (via `python paths.py paths`) uses these.
def index_dir(data_dir: str | os.PathLike, baseline: bool = False) -> Path:
    """FAISS indices of the trained model (data/indices) or of the pretrained baseline."""
    return Path(data_dir) / ("indices_baseline" if baseline else "indices")


def bm25_index_dir(data_dir: str | os.PathLike) -> Path:
    """The BM25 index of the catalog (lexical.py), built by reindex_with_trained_model.py --bm25."""
    return Path(data_dir) / "indices_bm25"


def hard_negatives_path(data_dir: str | os.PathLike, stage: int) -> Path:
    """Hard negatives mined for training stage `stage` (2: by the stage-1 model, 3: by stage 2)."""
    return Path(data_dir) / f"hard_negatives_stage{stage}.parquet"


def positive_ranks_path(hard_negatives: str | os.PathLike) -> Path:
    """Where hard_negative_mining.py writes, next to its hard negatives, the rank of every judged
    positive of the training queries under the mining model (stage 3 trains on the positives that
    model still ranks beyond --focus-rank)."""
    p = Path(hard_negatives)
    return p.with_name(p.stem + "_positive_ranks.parquet")


def embedding_cache_dir(data_dir: str | os.PathLike, model_fingerprint: str) -> Path:
    """The one catalog-embedding cache of a model (shared by mining, reindexing and evaluation)."""
    return Path(data_dir) / "embeddings_cache" / model_fingerprint


def eval_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "eval"


def stage_checkpoint(checkpoint_dir: str | os.PathLike, stage: int) -> Path:
    """The model at the end of training stage `stage`."""
    return Path(checkpoint_dir) / f"stage{stage}.pt"


def best_checkpoint(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / "best_model.pt"


def last_checkpoint(checkpoint_dir: str | os.PathLike) -> Path:
    """The resumable training state (model, optimizer, scheduler, RNG, progress)."""
    return Path(checkpoint_dir) / "last.pt"


def progress_path(checkpoint_dir: str | os.PathLike) -> Path:
    """The small JSON mirror of last.pt's training progress."""
    return Path(checkpoint_dir) / "progress.json"


def artifact_paths(data_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike) -> dict[str, Path]:
    """Every path run_workflow.sh checks, by shell variable name."""
    return {"INDICES": index_dir(data_dir), "INDICES_BASELINE": index_dir(data_dir, baseline=True),
            "INDICES_BM25": bm25_index_dir(data_dir),
            "HN2": hard_negatives_path(data_dir, 2), "HN3": hard_negatives_path(data_dir, 3),
            "RANKS3": positive_ranks_path(hard_negatives_path(data_dir, 3)),
            "EVAL": eval_dir(data_dir), "STAGE1": stage_checkpoint(checkpoint_dir, 1),
            "STAGE2": stage_checkpoint(checkpoint_dir, 2), "STAGE3": stage_checkpoint(checkpoint_dir, 3),
            "BEST": best_checkpoint(checkpoint_dir), "LAST": last_checkpoint(checkpoint_dir),
            "PROGRESS": progress_path(checkpoint_dir)}


ESCI_URL = "https://github.com/amazon-science/esci-data (shopping_queries_dataset/, Git LFS)"
EXAMPLES_FILE = "shopping_queries_dataset_examples.parquet"
PRODUCTS_FILE = "shopping_queries_dataset_products.parquet"
EXAMPLES_COLUMNS = ["example_id", "query", "query_id", "product_id", "product_locale",
                    "esci_label", "small_version", "large_version", "split"]
PRODUCTS_COLUMNS = ["product_id", "product_title", "product_description", "product_bullet_point",
                    "product_brand", "product_color", "product_locale"]

ESCI_LABELS = ("E", "S", "C", "I")
# Positive-pair weights of the plan (E strong, S positive, C weak positive from stage 3 on).
POSITIVE_WEIGHTS = {"E": 1.0, "S": 0.9, "C": 0.6}
# The stage from which a positive label is trained on.
POSITIVE_STAGE = {"E": 1, "S": 1, "C": 3}
# Graded gains of the ESCI paper, for NDCG.
ESCI_GAINS = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}


def _print_paths(argv: list[str]) -> int:
    """`python paths.py paths DATA_DIR CHECKPOINT_DIR`: shell assignments for run_workflow.sh;
    `python paths.py version`: the suite's version (run_workflow.sh --version)."""
    import shlex

    from cli import SUITE_VERSION
    if argv == ["version"]:
        print(f"run_workflow.sh (two-tower search trainer) {SUITE_VERSION}")
        return 0
    if len(argv) != 3 or argv[0] != "paths":
        print("usage: python paths.py paths DATA_DIR CHECKPOINT_DIR | python paths.py version", file=sys.stderr)
        return 2
    for k, v in artifact_paths(argv[1], argv[2]).items():
        print(f"{k}={shlex.quote(str(v))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_print_paths(sys.argv[1:]))
