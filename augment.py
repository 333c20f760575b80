"""Query augmentation for training: realistic typing errors (train_two_tower.py --query-typos P), and
title-span pseudo-queries for catalog products no judged query reaches (--pseudo-queries N).

Real product-search queries are misspelled ("flourecent", "recesed"), and a model that has only seen
clean queries treats a misspelling as another word. Typo-aware training (Zhuang & Zuccon, "Dealing
with typos for BERT-based passage retrieval and ranking", EMNLP 2021; Sidiropoulos & Kanoulas,
"Typo-robust representation learning for dense retrieval", ACL 2022) trains on queries with the errors people
make. One edit per chosen query, in one word of four or more letters (numbers, sizes and short
words such as "3/4", "60x72", "led" are never touched, since changing them changes the intent):

    swap     two neighbouring letters        recessed -> recesesd
    drop     one letter                      recessed -> recesed
    double   one letter                      recessed -> reccessed
    key      a QWERTY neighbour              recessed -> recessrd

`augment_queries(texts, p, rng)` edits each text with probability p. Deterministic for a given
generator, so an epoch's queries are the same when a run resumes.

Pseudo-queries (`pseudo_query_pairs`): the judged queries of a catalog touch a minority of its
products (38% on Home Depot: 20,690 of 54,667 are stage-1 positives of the re-split training
queries). A product's title cut down to what a shopper might type (the part before " in "/" with
"/" for "/" - ", parentheses dropped, a 2-4 word span, half the time the title's last words,
where the product type usually is; edge stop words trimmed, which can leave one word; sometimes
the brand in front),
lower-cased and paired with that product as an E positive, teaches the towers the
rest of the catalog's vocabulary at stage 1 (domain adaptation without a generator model):
"Everbilt 16 ft. x 20 ft. Brown Heavy Duty Tarp" -> "heavy duty tarp", "sink strainer". The products
are drawn uniformly: on Home Depot the test queries whose own products got a span gained no more
than the others (docs/experiments.md), so the spans work as more stage-1 training on the catalog's
language, not by reaching particular products (a draw from never-reached products only did no
better than this one). The draw is seeded (PSEUDO_SEED), and numpy draws a smaller N as a subset of
a larger N's products, each cut differently: on Home Depot two draws of 20,000, or 18,222 against
20,000, differ by up to 0.005 Recall@10 at one seed, about the size of the spans' average gain.

Example:
    python -c "import augment, numpy as np; print(augment.augment_queries(['recessed lighting'], 1.0, \\
               np.random.default_rng(0)))"
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours() -> dict[str, str]:
    """QWERTY neighbours of each letter: left/right on its row, the three nearest above and below."""
    out = {}
    for r, row in enumerate(_ROWS):
        for c, ch in enumerate(row):
            near = {row[x] for x in (c - 1, c + 1) if 0 <= x < len(row)}
            for rr in (r - 1, r + 1):
                if 0 <= rr < len(_ROWS):
                    near |= {_ROWS[rr][x] for x in (c - 1, c, c + 1) if 0 <= x < len(_ROWS[rr])}
            out[ch] = "".join(sorted(near))
    return out


KEY_NEIGHBOURS = _neighbours()
EDITS = ("swap", "drop", "double", "key")
_WORD = re.compile(r"[a-z]{4,}")


def typo(word: str, kind: str, rng: np.random.Generator) -> str:
    """One edit of `kind` at a random inner position of `word` (the first letter stays: people
    rarely get it wrong)."""
    i = int(rng.integers(1, len(word)))  # 1 .. len-1
    if kind == "swap":  # letters j, j+1 for j >= 1, preferring a pair that differs (a visible swap)
        pairs = [j for j in range(1, len(word) - 1) if word[j] != word[j + 1]] or [max(1, len(word) - 2)]
        j = pairs[int(rng.integers(len(pairs)))]
        return word[:j] + word[j + 1] + word[j] + word[j + 2:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    near = KEY_NEIGHBOURS.get(word[i], "")
    if not near:
        return word[:i] + word[i + 1:]
    return word[:i] + near[int(rng.integers(len(near)))] + word[i + 1:]


def augment_query(text: str, rng: np.random.Generator) -> str:
    """`text` with one typing error in one of its words of 4+ letters (unchanged when it has none)."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text.lower())]
    if not words:
        return text
    a, b = words[int(rng.integers(len(words)))]
    kind = EDITS[int(rng.integers(len(EDITS)))]
    return text[:a] + typo(text[a:b].lower(), kind, rng) + text[b:]


def augment_queries(texts: Sequence[str], p: float, rng: np.random.Generator) -> list[str]:
    """Each text with probability p gets one typing error (augment_query); the rest are unchanged."""
    if p <= 0:
        return list(texts)
    pick = rng.random(len(texts)) < p
    return [augment_query(t, rng) if c else t for t, c in zip(texts, pick)]


# words a title span does not start or end with
STOP = frozenset({"in", "in.", "with", "and", "or", "for", "x", "of", "the", "a", "&", "-", "to", "on"})
PSEUDO_SEED = 0  # the spans are a function of the catalog alone: the same at every training --seed


def title_span(title: str, rng: np.random.Generator) -> str | None:
    """A shopper-like query cut from a product title, or None when the title has under 2 words."""
    text = re.sub(r"\([^)]*\)", " ", str(title)).lower().replace(",", " ")
    words = re.split(r"\s(?:in|with|for)\s|\s-\s", text)[0].split()
    if len(words) < 2:
        return None
    k = min(int(rng.integers(2, 5)), len(words))
    start = len(words) - k if rng.random() < 0.5 else int(rng.integers(0, len(words) - k + 1))
    span = words[start:start + k]
    while span and span[-1] in STOP:
        span = span[:-1]
    while span and span[0] in STOP:
        span = span[1:]
    if not span:
        return None
    if start > 0 and rng.random() < 0.2:
        span = [words[0]] + span
    return " ".join(span)


def pseudo_query_pairs(product_ids: Sequence, product_texts: Sequence[str], n: int,
                       seed: int = PSEUDO_SEED) -> pd.DataFrame:
    """One pseudo-query positive for each of n products drawn without replacement (all of them when
    n >= the catalog), as columns `pick` (position of the drawn product in the draw, 0..n-1; a
    product whose title has no usable span is skipped, so positions can be missing), `query`,
    `product_id`. Deterministic for (catalog, n, seed)."""
    rng = np.random.default_rng(seed)
    ids, texts = np.asarray(product_ids, dtype=object), list(product_texts)
    pick = rng.choice(len(ids), size=min(int(n), len(ids)), replace=False) if len(ids) else np.zeros(0, int)
    rows = []
    for i, r in enumerate(pick):
        q = title_span(texts[r], rng)
        if q is not None:
            rows.append((i, q, ids[r]))
    return pd.DataFrame(rows, columns=["pick", "query", "product_id"])
