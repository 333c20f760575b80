"""BM25 over the catalog: the lexical engine users already run (Solr, Elasticsearch, OpenSearch),
built with bm25s (a maintained, sparse-matrix BM25) and saved with bm25s' own array files.

`Bm25Index.build(products)` indexes the same `product_text` the product tower reads, analysed as
Elasticsearch's `english` analyzer does it in spirit: lower case, word tokens of one or more
characters (sizes such as "3/4" and "2 x 4" keep their digits), English stop words removed, Snowball
English stems (PyStemmer); Lucene's BM25 with Elasticsearch's defaults k1 = 1.2, b = 0.75. These are
a priori choices, not tuned here (docs/benchmarks.md lists the variants measured).

On disk (`save`, atomic: the directory is built aside and swapped in):
  params.index.json, vocab.index.json, data/indices/indptr.csc.index.npy   bm25s' own files (no pickle)
  product_ids.parquet   index row -> product_id
  metadata.json         parameters, analyzer, catalog fingerprint and size, bm25s version, build
                        time, and the sha256 of every other file ("files"; run_workflow.sh rebuilds
                        an index whose files no longer match, `load` refuses one)
`load` refuses an index that is missing, was built for another catalog, or whose files are
damaged, with one line saying how to rebuild it: never a silent wrong answer.

Example (CPU, seconds):
    python reindex_with_trained_model.py --bm25 --data-dir data      # writes data/indices_bm25/
    python -c "import lexical, utils; ix = lexical.Bm25Index.load('data/indices_bm25'); \\
               print(ix.search(['aa batteries 24 pack'], 5))"
"""
from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cli import quiet
from fileio import atomic_dir, file_sha256, read_json, read_parquet, write_json, write_parquet
from utils import UserError, log

TOKEN_PATTERN = r"(?u)\b\w+\b"
BM25_DEFAULTS = {"k1": 1.2, "b": 0.75, "stemmer": "english", "stopwords": "en"}
BM25S_FILES = ("params.index.json", "vocab.index.json", "data.csc.index.npy", "indices.csc.index.npy",
               "indptr.csc.index.npy")
REBUILD = "rebuild it with `python reindex_with_trained_model.py --bm25 --data-dir DATA_DIR --overwrite`"


def _quiet_bm25s() -> None:
    import logging
    logging.getLogger("bm25s").setLevel(logging.WARNING)


class Analyzer:
    """Text -> terms, the same for documents and queries (lower case, \\w+ tokens, stop words, stems)."""

    def __init__(self, stemmer: str = "english", stopwords: str = "en"):
        import bm25s
        self.stemmer_name, self.stopwords = stemmer, stopwords
        if stemmer == "none":
            self._stem = None
        else:
            import Stemmer
            try:
                self._stem = Stemmer.Stemmer(stemmer)
            except KeyError:
                raise UserError(f"--bm25-stemmer {stemmer!r} is not a Snowball language "
                                f"(e.g. english, german, french; or none)") from None
        self._stop = set(bm25s.stopwords.STOPWORDS_EN) if stopwords == "en" else set()
        self._split = re.compile(TOKEN_PATTERN).findall
        self._cache: dict[str, str] = {}

    def config(self) -> dict:
        return {"token_pattern": TOKEN_PATTERN, "lowercase": True, "stopwords": self.stopwords,
                "stemmer": self.stemmer_name}

    def terms(self, text: str) -> list[str]:
        words = [w for w in self._split(text.lower()) if w not in self._stop]
        if self._stem is None:
            return words
        todo = [w for w in set(words) if w not in self._cache]
        if todo:
            self._cache.update(zip(todo, self._stem.stemWords(todo)))
            if len(self._cache) > 2_000_000:  # bounded: a long-running demo never grows without end
                self._cache.clear()
        return [self._cache.get(w) or self._stem.stemWord(w) for w in words]


class Bm25Index:
    """A bm25s retriever over the catalog rows, with its analyzer and the row -> product_id map."""

    def __init__(self, retriever, ids: np.ndarray, meta: dict):
        self.retriever, self.ids, self.meta = retriever, ids, meta
        a = meta["analyzer"]
        self.analyzer = Analyzer(a["stemmer"], a["stopwords"])
        self.vocab = retriever.vocab_dict

    # -- building and files ---------------------------------------------------------------------
    @classmethod
    def build(cls, products: pd.DataFrame, k1: float = BM25_DEFAULTS["k1"], b: float = BM25_DEFAULTS["b"],
              stemmer: str = BM25_DEFAULTS["stemmer"], stopwords: str = BM25_DEFAULTS["stopwords"],
              show_progress: bool = True) -> "Bm25Index":
        """Index products["product_text"] (row i of the index = row i of products)."""
        import bm25s

        from embeddings import catalog_fingerprint
        from cli import progress
        _quiet_bm25s()
        analyzer = Analyzer(stemmer, stopwords)
        t0 = time.perf_counter()
        vocab: dict[str, int] = {}
        docs = []
        for text in progress(products["product_text"].tolist(), desc="bm25 analyze", unit="prod", mininterval=2,
                             disable=not show_progress or len(products) < 50_000):
            docs.append([vocab.setdefault(t, len(vocab)) for t in analyzer.terms(text)])
        retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        retriever.index((docs, vocab), show_progress=show_progress and not quiet() and len(products) >= 50_000)
        meta = {"kind": "bm25", "library": f"bm25s {bm25s.__version__}", "method": "lucene", "k1": k1, "b": b,
                "analyzer": analyzer.config(), "text": "product_text", "catalog_size": len(products),
                "catalog_fingerprint": catalog_fingerprint(products), "vocabulary": len(vocab),
                "postings": int(len(retriever.scores["data"])), "build_seconds": round(time.perf_counter() - t0, 2),
                "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        return cls(retriever, products["product_id"].to_numpy(), meta)

    def save(self, out_dir: str | Path, extra: dict | None = None) -> dict:
        """Write the index directory atomically; metadata.json lists every file with its sha256."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as tmp:
            self.retriever.save(str(tmp), show_progress=False)
            write_parquet(tmp / "product_ids.parquet", pd.DataFrame({"product_id": self.ids}))
            names = [*BM25S_FILES, "product_ids.parquet"]
            self.meta = {**self.meta, **(extra or {}),
                         "files": {n: file_sha256(tmp / n) for n in names}}
            write_json(tmp / "metadata.json", self.meta)
        return self.meta

    @classmethod
    def load(cls, index_dir: str | Path, products: pd.DataFrame | None = None, verify: bool = True) -> "Bm25Index":
        """The index in `index_dir`; refuses a missing, damaged or other-catalog one (one line each)."""
        import bm25s

        from embeddings import catalog_fingerprint
        _quiet_bm25s()
        index_dir = Path(index_dir)
        meta_path = index_dir / "metadata.json"
        if not meta_path.is_file():
            raise UserError(f"no BM25 index in {index_dir} (no metadata.json): build it with "
                            f"`python reindex_with_trained_model.py --bm25 --data-dir DATA_DIR`")
        try:
            meta = read_json(meta_path)
            files = meta["files"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{meta_path} is damaged (not the JSON a BM25 build writes); {REBUILD}") from None
        if verify:
            for name, digest in files.items():
                f = index_dir / name
                if not f.is_file() or file_sha256(f) != digest:
                    raise UserError(f"BM25 index file {f} is {'missing' if not f.is_file() else 'damaged'} "
                                    f"(checksum differs from {meta_path.name}); {REBUILD}")
        if products is not None and meta.get("catalog_fingerprint") != catalog_fingerprint(products):
            raise UserError(f"{index_dir} is a BM25 index of another catalog ({meta.get('catalog_size')} products) "
                            f"than products_clean.parquet ({len(products)}): it is stale; {REBUILD}")
        try:
            retriever = bm25s.BM25.load(str(index_dir), mmap=True, show_progress=False)
        except Exception as e:  # checksums off (verify=False) and a broken file
            raise UserError(f"cannot load the BM25 index in {index_dir} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120]}); {REBUILD}") from None
        ids = read_parquet(index_dir / "product_ids.parquet", ["product_id"], REBUILD)["product_id"].to_numpy()
        if retriever.scores["num_docs"] != len(ids):
            raise UserError(f"{index_dir}: {retriever.scores['num_docs']} indexed documents but {len(ids)} product "
                            f"ids; {REBUILD}")
        return cls(retriever, ids, meta)

    # -- searching -------------------------------------------------------------------------------
    def term_ids(self, query: str) -> list[int]:
        """The query's terms that the index knows, as vocabulary ids (unknown terms match nothing)."""
        return [self.vocab[t] for t in self.analyzer.terms(query) if t in self.vocab and t != ""]

    def scores(self, query: str) -> np.ndarray | None:
        """BM25 score of every catalog row for `query` (n,), or None when no query term is indexed."""
        tids = self.term_ids(query)
        if not tids:
            return None
        return self.retriever.get_scores_from_ids(tids)

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (catalog rows, scores) of its top k matches, best first; only rows that share
        at least one term with the query (score > 0), so a query may get fewer than k, or none."""
        from cli import progress
        out = []
        n = len(self.ids)
        k = min(k, n)
        for q in progress(queries, desc="bm25 search", unit="q", disable=not show_progress, mininterval=2):
            s = self.scores(q)
            if s is None:
                out.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
                continue
            top = np.argpartition(-s, k - 1)[:k] if k < n else np.arange(n)
            top = top[np.lexsort((top, -s[top]))]  # by score, ties by row: deterministic
            top = top[s[top] > 0]
            out.append((top.astype(np.int64), s[top].astype(np.float32)))
        return out

    def candidate_scores(self, query_texts: Sequence[str], q_rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """(len(q_rows), len(cand)) float32: the BM25 score of each candidate catalog row (-1 =
        padding, scored 0) for each batch row's query, query_texts[q_rows[i]]; each distinct query
        is scored once (the trainer's --lexical-distill teacher input)."""
        out = np.zeros((len(q_rows), len(cand)), np.float32)
        for q in np.unique(q_rows):
            out[q_rows == q] = np.where(cand >= 0, self.score_rows(query_texts[q], np.maximum(cand, 0)), 0.0)
        return out

    def score_rows(self, query: str, rows: np.ndarray) -> np.ndarray:
        """BM25 scores of the given catalog rows for `query` (0 where no term matches)."""
        s = self.scores(query)
        return np.zeros(len(rows), np.float32) if s is None else np.asarray(s[np.asarray(rows)], np.float32)


def build_and_save(products: pd.DataFrame, out_dir: Path, k1: float, b: float, stemmer: str, stopwords: str,
                   extra: dict | None = None) -> dict:
    """Build the catalog's BM25 index and write it to out_dir; returns its metadata."""
    ix = Bm25Index.build(products, k1, b, stemmer, stopwords, show_progress=not quiet())
    meta = ix.save(out_dir, extra)
    log.info("BM25 index of %s products (%s terms, %s postings) in %.1fs -> %s", f"{len(products):,}",
             f"{meta['vocabulary']:,}", f"{meta['postings']:,}", meta["build_seconds"], out_dir)
    return meta
