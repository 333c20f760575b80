"""Phase 1: turn the ESCI parquet files into training, validation and test pairs.

Reads (from --raw-dir):
  shopping_queries_dataset_examples.parquet, shopping_queries_dataset_products.parquet
  (the real ESCI files, or the built-in sample catalog written first with --make-sample).
Writes (into --data-dir, each atomically):
  products_clean.parquet   the catalog to index: product_id, product_title, product_brand,
                           product_color, product_text
  training_pairs.parquet, val_pairs.parquet, test_pairs.parquet
                           query_id, query, product_id, product_text, label, weight, esci_label,
                           neg_type (positive|labelled|random), split, stage
  ground_truth.parquet     query_id, query, product_id, esci_label, split (for evaluation)
  prepare_stats.json       counts per split, label and negative type; rows dropped and why
  prepare_config.json      the resolved arguments

Positives: E (weight 1.0) and S (0.9) from stage 1, C (0.6) from stage 3. I-judged products are
kept as labelled negatives; random negatives (--neg-ratio per positive) are never a product judged
E/S/C for that query. Validation = --val-fraction of the train *queries*; test = ESCI test split,
or with --resplit-queries F a new split by a stable hash of each query id: a fraction F of the
queries (of each original split, in expectation) become test queries and the rest train/val,
never one query on both sides. Use it for a small extract whose own split leaves nothing to train on
(e.g. ../shared/real_esci: --resplit-queries 0.5); real ESCI files keep their own split by default.

Example (CPU, seconds):
    python prepare_training_data.py --make-sample tiny --raw-dir /tmp/raw --data-dir /tmp/data
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cli import (FRACTION, NONNEG_INT, SAMPLE_SEED, add_common_args, args_to_config, float_range, old_version_option,
                 progress, refuse_overwrite, run_cli)
from fileio import parquet_writer, require_file, require_writable, write_json, write_parquet
from paths import ESCI_LABELS, ESCI_URL, EXAMPLES_FILE, POSITIVE_STAGE, POSITIVE_WEIGHTS, PRODUCTS_FILE
from utils import Timer, UserError, build_product_text, log, peak_rss_mb, query_hash_unit

PAIR_SCHEMA = pa.schema([("query_id", pa.int64()), ("query", pa.string()), ("product_id", pa.string()),
                         ("product_text", pa.string()), ("label", pa.float32()), ("weight", pa.float32()),
                         ("esci_label", pa.string()), ("neg_type", pa.string()), ("split", pa.string()),
                         ("stage", pa.int8())])


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------
def _check_columns(path: Path, needed: list[str]) -> None:
    try:
        names = pq.read_schema(path).names
    except Exception as e:  # not parquet, truncated, unreadable
        raise UserError(f"cannot read {path} as parquet ({type(e).__name__}: {e}); re-download it") from None
    missing = [c for c in needed if c not in names]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(names)}); "
                        f"is this the ESCI file? expected columns: {', '.join(needed)}")


def load_examples(path: Path, locale: str, version: str, stats: dict) -> pd.DataFrame:
    """Examples of one locale and dataset version, with clean query text and known labels."""
    cols = ["query_id", "query", "product_id", "product_locale", "esci_label", "split", f"{version}_version"]
    _check_columns(path, cols)
    df = pq.read_table(path, columns=cols).to_pandas()
    stats["examples_read"] = len(df)
    locales = df["product_locale"].value_counts().to_dict()
    df = df[df["product_locale"] == locale]
    stats["dropped"]["examples_other_locale"] = stats["examples_read"] - len(df)
    if df.empty:
        raise UserError(f"{path}: no examples with product_locale '{locale}' (found {locales}); set --locale")
    before = len(df)
    df = df[df[f"{version}_version"] == 1]
    stats["dropped"]["examples_not_in_version"] = before - len(df)
    if df.empty:
        raise UserError(f"{path}: no '{locale}' examples have {version}_version == 1; try --esci-version large")
    labels = df["esci_label"].astype(object).where(df["esci_label"].notna(), "<missing>")
    bad = labels[~labels.isin(ESCI_LABELS)].value_counts()
    if len(bad):
        raise UserError(f"{path}: column esci_label has unknown value(s) {dict(bad.head(5))}; "
                        f"ESCI labels are {', '.join(ESCI_LABELS)}")
    splits = set(df["split"].unique()) - {"train", "test"}
    if splits:
        raise UserError(f"{path}: column split has unknown value(s) {sorted(map(str, splits))}; expected train, test")
    stats["examples_in_scope"] = len(df)  # this locale and version: the base of --max-bad-fraction
    no_id = df["query_id"].isna()
    stats["dropped"]["examples_missing_query_id"] = int(no_id.sum())
    df = df[~no_id]
    q = df["query"].astype(object).fillna("").map(lambda s: " ".join(str(s).split()))
    empty = q == ""
    stats["dropped"]["examples_empty_query"] = int(empty.sum())
    if len(df) and empty.all():
        raise UserError(f"{path}: the query column is empty in all {len(df):,} '{locale}' examples; "
                        f"is the query text in another column?")
    df = df.assign(query=q)[~empty]
    dup = df.duplicated(["query_id", "product_id"])
    stats["dropped"]["examples_duplicate_pair"] = int(dup.sum())
    df = df[~dup]
    return df.drop(columns=[f"{version}_version", "product_locale"]).reset_index(drop=True)


def load_products(path: Path, locale: str, stats: dict) -> pd.DataFrame:
    """The locale's catalog with the product tower's text; duplicate ids are an error."""
    cols = ["product_id", "product_title", "product_bullet_point", "product_brand", "product_color",
            "product_locale"]
    _check_columns(path, cols)
    table = pq.read_table(path, columns=cols, filters=[("product_locale", "==", locale)])
    df = table.to_pandas()
    stats["products_read"] = len(df)
    if df.empty:
        raise UserError(f"{path}: no products with product_locale '{locale}'; set --locale")
    if df["product_id"].isna().any():
        raise UserError(f"{path}: {int(df['product_id'].isna().sum())} product(s) have no product_id")
    dup = df["product_id"].duplicated(keep=False)
    if dup.any():
        ex = df.loc[dup, "product_id"].drop_duplicates().head(3).tolist()
        raise UserError(f"{path}: {int(df.loc[dup, 'product_id'].nunique())} product_id value(s) appear more "
                        f"than once in locale '{locale}' (e.g. {', '.join(map(str, ex))}); deduplicate the file")
    texts = [build_product_text(t, b, c, bl) for t, b, c, bl in
             progress(zip(df["product_title"], df["product_brand"], df["product_color"], df["product_bullet_point"]),
                      total=len(df), desc="product text", unit="prod", mininterval=2, disable=len(df) < 100_000)]
    df = df.drop(columns=["product_bullet_point", "product_locale"]).assign(product_text=texts)
    empty = df["product_text"] == ""
    stats["dropped"]["products_empty_text"] = int(empty.sum())
    return df[~empty].reset_index(drop=True)


# dropped examples that count against --max-bad-fraction (other locales and versions are filters)
BAD_EXAMPLE_REASONS = ("examples_missing_query_id", "examples_empty_query", "examples_duplicate_pair",
                       "examples_unknown_product")


def _check_fraction(n_bad: int, n: int, limit: float, what: str, hint: str) -> None:
    if n and n_bad / n > limit:
        raise UserError(f"{what}: {n_bad:,} of {n:,} rows ({n_bad / n:.1%}, over --max-bad-fraction "
                        f"{limit:.0%}); {hint}")


# ---------------------------------------------------------------------------------------------
# Splits and pairs
# ---------------------------------------------------------------------------------------------
def resplit_by_hash(examples: pd.DataFrame, test_fraction: float) -> pd.Series:
    """train / test per example from a hash of its query id: query q is test when hash(q) < fraction."""
    qids = examples["query_id"].unique()
    u = pd.Series(query_hash_unit(qids), index=qids)
    is_test = u.reindex(examples["query_id"].to_numpy()).to_numpy() < test_fraction
    return pd.Series(np.where(is_test, "test", "train"), index=examples.index, dtype=object)


def split_queries(examples: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """train / val / test per example: val is a seeded sample of train *queries*."""
    train_q = np.sort(examples.loc[examples["split"] == "train", "query_id"].unique())
    rng = np.random.default_rng(seed)
    n_val = int(round(len(train_q) * val_fraction))
    val_q = rng.choice(train_q, size=n_val, replace=False) if n_val else np.array([], dtype=train_q.dtype)
    split = examples["split"].astype(object).copy()
    split[examples["query_id"].isin(val_q).to_numpy()] = "val"
    return split


def sample_random_negatives(pos_q: np.ndarray, judged_pos_keys: np.ndarray, n_catalog: int,
                            ratio: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`ratio` random catalog rows per positive pair, never a product judged E/S/C for that query.

    pos_q: catalog-query index of every positive pair; judged_pos_keys: sorted int64 keys
    q * n_catalog + product_row of all judged positives. Returns (query index, product row)."""
    q = np.repeat(pos_q, ratio)
    p = rng.integers(0, n_catalog, size=len(q))
    for _ in range(100):  # redraw the few that hit a judged positive
        keys = q.astype(np.int64) * n_catalog + p
        hit = np.isin(keys, judged_pos_keys, assume_unique=False)
        if not hit.any():
            break
        p[hit] = rng.integers(0, n_catalog, size=int(hit.sum()))
    else:
        raise UserError("could not draw random negatives: queries are judged positive for nearly the whole catalog")
    return q, p


def build_pairs(ex: pd.DataFrame, products: pd.DataFrame, neg_ratio: int, seed: int) -> pd.DataFrame:
    """Positive, labelled-negative and random-negative pairs for all splits (plan's TrainingExample)."""
    rng = np.random.default_rng(seed + 1)
    prow = pd.Series(np.arange(len(products)), index=products["product_id"].to_numpy())
    ex = ex.assign(prow=prow.reindex(ex["product_id"].to_numpy()).to_numpy())
    qcodes, quniq = pd.factorize(ex["query_id"])
    ex = ex.assign(qidx=qcodes)
    is_pos = ex["esci_label"].isin(list(POSITIVE_WEIGHTS)).to_numpy()
    lab = ex["esci_label"].to_numpy()
    judged = ex[is_pos]
    keys = np.unique(judged["qidx"].to_numpy(np.int64) * len(products) + judged["prow"].to_numpy(np.int64))
    weight = np.where(is_pos, pd.Series(lab).map(POSITIVE_WEIGHTS).fillna(1.0).to_numpy(), 1.0)
    stage = np.where(is_pos, pd.Series(lab).map(POSITIVE_STAGE).fillna(1).to_numpy(), 1)
    judged_rows = pd.DataFrame({
        "query_id": ex["query_id"].to_numpy(), "query": ex["query"].to_numpy(),
        "prow": ex["prow"].to_numpy(), "label": is_pos.astype(np.float32), "weight": weight.astype(np.float32),
        "esci_label": lab, "neg_type": np.where(is_pos, "positive", "labelled"),
        "split": ex["split"].to_numpy(), "stage": stage.astype(np.int8)})
    q, p = sample_random_negatives(ex.loc[is_pos, "qidx"].to_numpy(), keys, len(products), neg_ratio, rng)
    first = ex.drop_duplicates("qidx").set_index("qidx")
    random_rows = pd.DataFrame({
        "query_id": quniq[q], "query": first["query"].reindex(q).to_numpy(), "prow": p,
        "label": np.float32(0), "weight": np.float32(1), "esci_label": None, "neg_type": "random",
        "split": first["split"].reindex(q).to_numpy(), "stage": np.int8(1)})
    pairs = pd.concat([judged_rows, random_rows], ignore_index=True)
    return pairs.sort_values(["split", "query_id", "label"], ascending=[True, True, False], kind="stable",
                             ignore_index=True)


def write_pairs(path: Path, pairs: pd.DataFrame, products: pd.DataFrame, chunk: int = 500_000) -> None:
    """Stream pairs to parquet in chunks (product_text is materialised per chunk only)."""
    ids = products["product_id"].to_numpy()
    texts = products["product_text"].to_numpy()
    with parquet_writer(path, PAIR_SCHEMA) as w:
        for s in range(0, max(len(pairs), 1), chunk):
            c = pairs.iloc[s:s + chunk]
            rows = c["prow"].to_numpy()
            cols = {"query_id": c["query_id"].to_numpy(np.int64), "query": c["query"].to_numpy(),
                    "product_id": ids[rows], "product_text": texts[rows], "label": c["label"].to_numpy(),
                    "weight": c["weight"].to_numpy(), "esci_label": c["esci_label"].to_numpy(),
                    "neg_type": c["neg_type"].to_numpy(), "split": c["split"].to_numpy(),
                    "stage": c["stage"].to_numpy()}
            w.write_table(pa.Table.from_pydict(cols, schema=PAIR_SCHEMA))


def pair_stats(pairs: pd.DataFrame) -> dict:
    out = {}
    for split, g in pairs.groupby("split"):
        out[split] = {
            "pairs": len(g), "queries": int(g["query_id"].nunique()),
            "positives": int((g["label"] > 0).sum()), "negatives": int((g["label"] == 0).sum()),
            "by_label": {k: int(v) for k, v in g["esci_label"].fillna("-").value_counts().sort_index().items()},
            "by_neg_type": {k: int(v) for k, v in g["neg_type"].value_counts().sort_index().items()},
            "by_stage": {int(k): int(v) for k, v in g["stage"].value_counts().sort_index().items()},
        }
        pos = out[split]["positives"]
        out[split]["neg_per_pos"] = round(out[split]["negatives"] / pos, 3) if pos else None
    return out


# what prepare writes into --data-dir (besides prepare_stats.json / prepare_config.json)
PREPARED_FILES = ("products_clean", "training_pairs", "val_pairs", "test_pairs", "ground_truth")


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw-dir", type=Path, default=Path("data/raw"),
                   help="directory holding the two ESCI parquet files (default: data/raw)")
    p.add_argument("--make-sample", choices=["tiny", "small", "full"], default=None,
                   help="first write the built-in sample catalog of this size into --raw-dir")
    p.add_argument("--sample-seed", type=int, default=SAMPLE_SEED,
                   help=f"which sample catalog --make-sample builds (default: {SAMPLE_SEED}, as sample_catalog.py)")
    p.add_argument("--locale", default="us", help="product_locale to keep (default: us)")
    p.add_argument("--esci-version", choices=["small", "large"], default="large",
                   help="ESCI dataset version: small = the reduced task-1 set, large = all (default)")
    p.add_argument("--neg-ratio", type=NONNEG_INT, default=2, help="random negatives per positive (default: 2)")
    p.add_argument("--val-fraction", type=FRACTION, default=0.1, help="fraction of train queries for validation")
    p.add_argument("--resplit-queries", type=float_range(0.0, 1.0, lo_open=True, hi_open=True), default=None, metavar="F",
                   help="ignore the files' split: a stable hash of each query id sends a fraction F of the "
                        "queries to test and the rest to train/val (for small extracts; default: ESCI's split)")
    p.add_argument("--max-bad-fraction", type=float_range(0.0, 1.0), default=0.05,
                   help="fail when more than this fraction of rows is unusable (default: 0.05)")
    add_common_args(p, overwrite="the prepared files in --data-dir (and, with --make-sample, the raw files)")
    args = p.parse_args(old_version_option(argv, "--esci-version", ("small", "large")))
    return args


def main(args: argparse.Namespace) -> dict:
    with Timer() as total:
        if args.make_sample:
            from sample_catalog import make_sample_catalog
            make_sample_catalog(args.raw_dir, args.make_sample, seed=args.sample_seed, overwrite=args.overwrite)
        refuse_overwrite(args, *(args.data_dir / f"{n}.parquet" for n in PREPARED_FILES), option="--data-dir")
        require_writable(args.data_dir, "--data-dir")
        hint = f"download ESCI from {ESCI_URL} into --raw-dir, or run with --make-sample small"
        ex_path = require_file(args.raw_dir / EXAMPLES_FILE, "ESCI examples file", hint)
        pr_path = require_file(args.raw_dir / PRODUCTS_FILE, "ESCI products file", hint)
        stats: dict = {"dropped": {}}
        examples = load_examples(ex_path, args.locale, args.esci_version, stats)
        products = load_products(pr_path, args.locale, stats)
        _check_fraction(stats["dropped"]["products_empty_text"], stats["products_read"], args.max_bad_fraction,
                        f"{pr_path}: products with no title or bullet text", "check the product_title column")
        known = examples["product_id"].isin(products["product_id"])
        stats["dropped"]["examples_unknown_product"] = int((~known).sum())
        bad = {k: stats["dropped"][k] for k in BAD_EXAMPLE_REASONS if stats["dropped"].get(k)}
        why = {"examples_unknown_product": f"product_id not in {pr_path.name}"}
        _check_fraction(sum(bad.values()), stats["examples_in_scope"], args.max_bad_fraction,
                        f"{ex_path}: unusable examples ("
                        + ", ".join(f"{why.get(k, k[9:].replace('_', ' '))} {v:,}" for k, v in bad.items()) + ")",
                        f"unknown products: are both files from the same ESCI release and locale "
                        f"({pr_path.name}, --locale {args.locale})?")
        examples = examples[known].reset_index(drop=True)
        if examples.empty:
            raise UserError(f"{ex_path}: no example refers to a product in {pr_path}")
        if args.resplit_queries is not None:
            stats["original_split_queries"] = {k: int(v) for k, v in
                                               examples.groupby("split")["query_id"].nunique().items()}
            examples["split"] = resplit_by_hash(examples, args.resplit_queries).to_numpy()
            log.info("re-split queries by hash: %.0f%% to test", 100 * args.resplit_queries)
        examples["split"] = split_queries(examples, args.val_fraction, args.seed).to_numpy()
        pairs = build_pairs(examples, products, args.neg_ratio, args.seed)
        log.info("built %s pairs from %s examples, %s products", f"{len(pairs):,}", f"{len(examples):,}",
                 f"{len(products):,}")
        out = args.data_dir
        write_parquet(out / "products_clean.parquet", products)
        for split, name in (("train", "training_pairs"), ("val", "val_pairs"), ("test", "test_pairs")):
            write_pairs(out / f"{name}.parquet", pairs[pairs["split"] == split], products)
        write_parquet(out / "ground_truth.parquet",
                      examples[["query_id", "query", "product_id", "esci_label", "split"]])
    stats.update({
        "locale": args.locale, "version": args.esci_version, "resplit_queries": args.resplit_queries, "catalog_products": len(products),
        "examples_used": len(examples), "queries": {k: int(v) for k, v in
                                                   examples.groupby("split")["query_id"].nunique().items()},
        "labels": {k: int(v) for k, v in examples["esci_label"].value_counts().sort_index().items()},
        "pairs": pair_stats(pairs), "seconds": round(total.seconds, 1), "peak_rss_mb": round(peak_rss_mb()),
    })
    write_json(out / "prepare_stats.json", stats)
    write_json(out / "prepare_config.json", args_to_config(args))
    _print_summary(stats)
    return stats


def _print_summary(stats: dict) -> None:
    log.info("catalog: %s products (%s); examples used: %s; queries %s", f"{stats['catalog_products']:,}",
             stats["locale"], f"{stats['examples_used']:,}", stats["queries"])
    log.info("labels: %s; dropped: %s", stats["labels"], {k: v for k, v in stats["dropped"].items() if v})
    for split, s in stats["pairs"].items():
        log.info("%-5s %8s pairs, %6s queries, %s, neg/pos %.2f", split, f"{s['pairs']:,}", f"{s['queries']:,}",
                 s["by_neg_type"], s["neg_per_pos"] or 0)
    log.info("done in %.1fs, peak RSS %d MiB", stats["seconds"], stats["peak_rss_mb"])


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
