"""Query augmentation for training: realistic typing errors (train_two_tower.py --query-typos P).

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

Example:
    python -c "import augment, numpy as np; print(augment.augment_queries(['recessed lighting'], 1.0, \\
               np.random.default_rng(0)))"
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

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
