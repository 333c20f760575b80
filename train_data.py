"""Training data for train_two_tower.py: tokenise once, plan batches deterministically.

- `TokenStore`: every needed text tokenised once into one flat int32 array + offsets (bounded
  memory at ESCI scale), padded per batch to the batch's longest text only.
- `StageData`: the positives of a stage (E+S, plus C from stage 3) and each query's explicit
  negatives (labelled I, random, and mined hard negatives from stage 2), by query index and
  catalog row (the trainer adds the accidental-hit masks and logQ terms).
- `plan_epoch`: a seeded, reproducible list of batches for one epoch: shuffled, length-bucketed
  within windows (fewer pad tokens), no product twice in a batch where avoidable, and the
  explicit negatives of each row drawn up front, so a resumed run sees exactly the same batches.
- `length_groups`: how to cut the texts of a batch (its queries, positives and negatives, all
  together when the towers share weights) into length-sorted groups that are embedded one after
  the other, so that a short text is not padded to the batch's longest (the queries and the mined
  negatives of a step are not length-bucketed); `stack_batch` pads one group.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fileio import read_parquet, require_file
from utils import UserError, log


class TokenStore:
    """Token ids of many texts in one flat array; `batch(rows)` returns padded tensors."""

    def __init__(self, tokenizer, texts: list[str], max_len: int, chunk: int = 65_536):
        self.pad_id = tokenizer.pad_token_id or 0
        parts, lens = [], []
        for s in range(0, len(texts), chunk):
            ids = tokenizer(texts[s:s + chunk], truncation=True, max_length=max_len)["input_ids"]
            lens.extend(len(x) for x in ids)
            parts.append(np.fromiter((t for x in ids for t in x), dtype=np.int32))
        self.lengths = np.asarray(lens, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.flat = np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return stack_batch([(self, np.asarray(rows))])


def stack_batch(pieces: list[tuple[TokenStore, np.ndarray]]) -> dict[str, torch.Tensor]:
    """One padded batch of the texts `rows` of each (store, rows), in that order, padded to the
    longest of them: e.g. queries and product texts together, for towers that share weights."""
    pieces = [(st, np.asarray(rows)) for st, rows in pieces]
    n = sum(len(rows) for _, rows in pieces)
    width = max(int(st.lengths[rows].max()) for st, rows in pieces if len(rows))
    ids = np.full((n, width), pieces[0][0].pad_id, dtype=np.int64)
    att = np.zeros((n, width), dtype=np.int64)
    r = 0
    for st, rows in pieces:
        for i in rows:
            a, b = st.offsets[i], st.offsets[i + 1]
            ids[r, :b - a] = st.flat[a:b]
            att[r, :b - a] = 1
            r += 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(att)}


# the fixed cost of one more encoder call, in pad tokens: a group is split off when it saves more
# padding than this (a one-off forward + backward timing of HD stage-2 batches on 2 AVX2 cores, not
# kept in bench/: 64, 128 and 256 gave the same speed within the rounds' spread)
GROUP_OVERHEAD_TOKENS = 128


def length_groups(lengths: np.ndarray, overhead: int | None = None) -> list[np.ndarray]:
    """Positions 0..n-1 of `lengths` cut into groups of similar length, shortest first, that
    minimise sum(len(group) * max length in group) + overhead * number of groups: the tokens an
    encoder computes when each group is padded only to its own longest text. Exact (dynamic
    programming over the sorted lengths, O(n^2) for a batch of n). Every position is in exactly one
    group; one group when splitting would not pay (e.g. equal lengths)."""
    overhead = GROUP_OVERHEAD_TOKENS if overhead is None else overhead
    order = np.argsort(np.asarray(lengths), kind="stable")
    srt = np.asarray(lengths, dtype=np.int64)[order]
    n = len(srt)
    cost = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):  # cost[i]: the best split of the i shortest; its last group is cut[i]..i-1
        j = np.arange(i)
        c = cost[:i] + (i - j) * srt[i - 1] + overhead
        cut[i] = int(np.argmin(c))
        cost[i] = c[cut[i]]
    groups, i = [], n
    while i > 0:
        groups.append(order[cut[i]:i])
        i = cut[i]
    return groups[::-1]


GRADE = {"E": 0, "S": 1, "C": 2}  # ESCI relevance grades of positives, most relevant first


@dataclass
class Batch:
    q_rows: np.ndarray        # (b,) query index
    p_rows: np.ndarray        # (b,) catalog row of the positive
    weights: np.ndarray       # (b,)
    neg_rows: np.ndarray      # (b, k) catalog rows of explicit negatives, -1 = padding
    grades: np.ndarray | None = None  # (b,) ESCI grade of each row's positive: 0 E, 1 S, 2 C


class StageData:
    """The pairs one stage trains on, indexed by query index and catalog row."""

    def __init__(self, data_dir: Path, split: str, stage: int, hard_negative_files: list[Path],
                 catalog_index: pd.Series, label_weights: dict[str, float] | None = None,
                 focus: tuple[Path, int] | None = None, extra_positives: pd.DataFrame | None = None):
        """label_weights overrides prepare's positive weights per ESCI label; weight 0 drops that
        label's positives (they stay judged positives: masked, never negatives). focus = (ranks
        file, k): train only on the positives that the mining model ranked beyond k in the whole
        catalog (hard_negative_mining.py's positive ranks); the others stay judged positives too.
        extra_positives: more E positives (query_id, query, product_id) after the file's rows, e.g.
        the pseudo-queries of --pseudo-queries, with query ids unlike the file's."""
        name = {"train": "training_pairs", "val": "val_pairs"}[split]
        path = require_file(data_dir / f"{name}.parquet", f"{split} pairs",
                            "run prepare_training_data.py first")
        cols = ["query_id", "query", "product_id", "label", "weight", "neg_type", "stage", "esci_label"]
        pairs = read_parquet(path, cols, "re-run prepare_training_data.py")
        if pairs.empty:
            raise UserError(f"{path} has no rows; re-run prepare_training_data.py")
        if extra_positives is not None and len(extra_positives):
            pairs = pd.concat([pairs, extra_positives[["query_id", "query", "product_id"]].assign(
                label=1.0, weight=1.0, neg_type="positive", stage=1, esci_label="E")], ignore_index=True)
        for f in hard_negative_files:
            hn = read_parquet(f, ["query_id", "query", "product_id"], "re-run hard_negative_mining.py")
            log.info("adding %s hard negatives from %s", f"{len(hn):,}", f)
            pairs = pd.concat([pairs, hn.assign(label=0.0, weight=1.0, neg_type="hard", stage=1, esci_label=None)],
                              ignore_index=True)
        pairs = pairs[pairs["stage"] <= stage]
        if label_weights:
            is_pos = pairs["label"] > 0
            w = pairs["esci_label"].map(label_weights)
            override = is_pos & w.notna()
            pairs = pairs.assign(weight=np.where(override, w, pairs["weight"]).astype(np.float32))
            pairs = pairs[~(is_pos & (pairs["weight"] <= 0))]
        prow = catalog_index.reindex(pairs["product_id"].to_numpy()).to_numpy()
        missing = np.isnan(prow)
        if missing.any():
            ex = pairs.loc[missing, "product_id"].iloc[0]
            raise UserError(f"{path}: {int(missing.sum())} pair(s) name products that are not in "
                            f"products_clean.parquet (e.g. {ex}); re-run prepare_training_data.py")
        pairs = pairs.assign(prow=prow.astype(np.int64))
        qcodes, quniq = pd.factorize(pairs["query_id"])
        pairs = pairs.assign(qidx=qcodes)
        self.query_ids = np.asarray(quniq)
        self.query_texts = pairs.drop_duplicates("qidx").sort_values("qidx")["query"].tolist()
        pos = pairs[pairs["label"] > 0]
        if pos.empty:
            raise UserError(f"{path}: no positive pairs for stage {stage}")
        self.focus = None
        if focus:
            pos = self._focus(pos, *focus)
        self.pos_q = pos["qidx"].to_numpy()
        self.pos_p = pos["prow"].to_numpy()
        self.pos_w = pos["weight"].to_numpy(np.float32)
        self.pos_grade = pos["esci_label"].map(GRADE).fillna(0).to_numpy(np.int8)
        neg = pairs[pairs["label"] == 0]
        # informative negatives (mined hard, judged I) are preferred by the sampler; random ones
        # only fill up, since in-batch negatives are random already
        neg = neg.assign(hard=(neg["neg_type"] != "random").astype(int)).sort_values(
            ["qidx", "hard"], ascending=[True, False], kind="stable")
        self.neg_start = np.searchsorted(neg["qidx"].to_numpy(), np.arange(len(self.query_ids) + 1))
        self.neg_rows = neg["prow"].to_numpy()
        self.neg_hard = neg["hard"].to_numpy().astype(bool)
        self.counts = {"positives": len(pos), "queries": len(self.query_ids),
                       "negatives": {k: int(v) for k, v in neg["neg_type"].value_counts().items()}}


    def _focus(self, pos: pd.DataFrame, ranks_file: Path, k: int) -> pd.DataFrame:
        """The positives of `pos` that are not ranked 1..k in ranks_file (unranked ones are kept)."""
        ranks = read_parquet(ranks_file, ["query_id", "product_id", "rank", "top_k"], "re-run hard_negative_mining.py")
        top_k = int(ranks["top_k"].max()) if len(ranks) else k
        if k > top_k:
            raise UserError(f"--focus-rank {k} needs ranks up to {k}, but {ranks_file} was mined with --top-k "
                            f"{top_k}; mine again with --top-k {k} or more, or lower --focus-rank")
        near = ranks[(ranks["rank"] >= 1) & (ranks["rank"] <= k)]
        settled = pd.MultiIndex.from_frame(near[["query_id", "product_id"]].astype({"product_id": str}))
        key = pd.MultiIndex.from_arrays([pos["query_id"].to_numpy(), pos["product_id"].astype(str).to_numpy()])
        kept = pos[~key.isin(settled)]
        if kept.empty:
            raise UserError(f"--focus-rank {k}: the mining model ranks every training positive within the top {k} "
                            f"({ranks_file}); lower --focus-rank, or 0 to train on all positives")
        self.focus = {"rank": k, "file": str(ranks_file), "positives": len(kept), "of": len(pos)}
        log.info("--focus-rank %d: %s of %s positives, those the mining model ranks beyond %d (%s)", k,
                 f"{len(kept):,}", f"{len(pos):,}", k, ranks_file.name)
        return kept


def plan_epoch(data: StageData, product_lengths: np.ndarray, batch_size: int, n_neg: int, seed: int,
               epoch: int, bucket_batches: int = 16, epoch_pairs: int | None = None,
               distinct_queries: bool = False, topics: np.ndarray | None = None) -> list[Batch]:
    """The batches of one epoch, reproducible from (seed, epoch); with epoch_pairs, a fresh
    random subset of that many positives per epoch (budgeted runs keep their epoch structure).

    bucket_batches: rows are sorted by product length within windows of that many batches (less
    padding, faster); 0 keeps the shuffled order (random in-batch negatives). distinct_queries:
    a query appears at most once per batch where avoidable (like sentence-transformers'
    NO_DUPLICATES sampler): the shuffled rows are taken in rounds, every query's first positive,
    then every query's second, ..., so that batches stay full; it implies no length bucketing.
    topics: a cluster id per query index (`topic_clusters`); the rows of one cluster are taken
    together, the clusters in a random order, so a batch's in-batch negatives are the positives of
    queries on the same topic (TAS-B's topic-aware sampling); it implies no length bucketing.
    Products are always distinct within a batch where avoidable."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(data.pos_q))
    if epoch_pairs:
        order = order[:epoch_pairs]
    if distinct_queries:
        q = data.pos_q[order]
        rank = pd.Series(q).groupby(q).cumcount().to_numpy()  # k-th positive of its query in this order
        order = order[np.argsort(rank, kind="stable")]
        bucket_batches = 0
    if topics is not None:
        cluster_rank = rng.permutation(int(topics.max()) + 1)
        order = order[np.argsort(cluster_rank[topics[data.pos_q[order]]], kind="stable")]  # shuffled within
        bucket_batches = 0
    window = batch_size * bucket_batches if bucket_batches else len(order) or 1
    batches: list[Batch] = []
    carry: list[int] = []
    for w0 in range(0, len(order), window):
        win = np.concatenate([np.asarray(carry, dtype=np.int64), order[w0:w0 + window]])
        carry = []
        if bucket_batches:  # length bucketing: similar product lengths share a batch (less padding)
            win = win[np.argsort(product_lengths[data.pos_p[win]], kind="stable")]
        pending = list(win)
        win_batches = []
        while pending:
            seen, seen_q, cur, rest = set(), set(), [], []
            for j, i in enumerate(pending):
                p, q = data.pos_p[i], data.pos_q[i]
                if p not in seen and not (distinct_queries and q in seen_q):
                    cur.append(i)
                    seen.add(p)
                    seen_q.add(q)
                    if len(cur) == batch_size:
                        rest.extend(pending[j + 1:])  # full: the rest waits, in order
                        break
                else:
                    rest.append(i)
            if distinct_queries and len(cur) < batch_size and rest:
                # the remaining rows repeat queries already in the batch: fill up with them rather
                # than train on a short batch (distinct products still)
                keep = []
                for i in rest:
                    if len(cur) < batch_size and data.pos_p[i] not in seen:
                        cur.append(i)
                        seen.add(data.pos_p[i])
                    else:
                        keep.append(i)
                rest = keep
            if len(cur) < batch_size and w0 + window < len(order):
                carry = cur + rest  # too few distinct products left: move on to the next window
                break
            win_batches.append(np.asarray(cur))
            pending = rest
        rng.shuffle(win_batches)
        if topics is not None:  # one window: its short remainder batch goes last, as in bucketed plans
            win_batches.sort(key=lambda b: len(b) < batch_size)
        batches.extend(_with_negatives(data, b, n_neg, rng) for b in win_batches)
    return batches


def topic_clusters(query_emb: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """(n,) cluster id of each query embedding (rows L2-normalised): spherical k-means (faiss) into
    n_clusters, at most one cluster per query."""
    import faiss
    x = np.ascontiguousarray(query_emb, dtype=np.float32)
    k = max(1, min(int(n_clusters), len(x)))
    if k == 1:
        return np.zeros(len(x), dtype=np.int64)
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=int(seed) % (2**31), spherical=True,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, len(x) // k + 1))
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def _with_negatives(data: StageData, rows: np.ndarray, n_neg: int, rng: np.random.Generator) -> Batch:
    q = data.pos_q[rows]
    negs = np.full((len(rows), n_neg), -1, dtype=np.int64)
    if n_neg:
        for r, qi in enumerate(q):
            a, b = data.neg_start[qi], data.neg_start[qi + 1]
            if b <= a:
                continue
            pool = data.neg_rows[a:b]
            hard = data.neg_hard[a:b]
            k = min(n_neg, len(pool))
            # at least half the slots (at least one) from informative negatives when the query has them
            n_hard = min(int(hard.sum()), max(1, (k + 1) // 2)) if hard.any() else 0
            pick = []
            if n_hard:
                pick.extend(rng.choice(np.flatnonzero(hard), size=n_hard, replace=False).tolist())
            others = np.setdiff1d(np.arange(len(pool)), pick)
            if k - len(pick) > 0 and len(others):
                pick.extend(rng.choice(others, size=min(k - len(pick), len(others)), replace=False).tolist())
            negs[r, :len(pick)] = pool[pick]
    return Batch(q, data.pos_p[rows], data.pos_w[rows], negs, data.pos_grade[rows])
