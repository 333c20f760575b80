"""Generate the built-in sample catalog: ESCI-shaped raw data, deterministic from a seed.

Writes, into --raw-dir, exactly the two ESCI files with the ESCI schemas:
  shopping_queries_dataset_examples.parquet  (example_id, query, query_id, product_id, product_locale,
                                               esci_label, small_version, large_version, split)
  shopping_queries_dataset_products.parquet  (product_id, product_title, product_description,
                                               product_bullet_point, product_brand, product_color,
                                               product_locale)
plus sample_catalog.json (size, seed, counts, label mix). Existing raw files are replaced only
with --overwrite.

Products come in families (one model in several colours / sizes / pack counts) of 32 product
types with brands, colours, sizes or capacities, pack counts, model numbers and optional features.
Queries are made from a seed product and show what real ESCI queries show: generic type queries,
brand + type, attribute constraints ("size 10", "24 pack", "110 cfm"), negations ("without light"),
accessory queries ("for oral-b"), model numbers, long natural-language requests, typos and stray
punctuation. Each query's ~16 judged products are labelled by rules: E meets every constraint,
S is the same type with one constraint missed (or a substitute type), C a complement/accessory,
I otherwise (look-alike types that share words with the query, or two or more misses).

Sizes: tiny (tests, < 1 s), small (the workflow default), full (ESCI size: 1.8M products,
2.6M examples, streamed in row groups).

Example:
    python sample_catalog.py --size tiny --raw-dir /tmp/raw
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa

from sample_vocab import (ADJ, COLORS, DESCRIPTIONS, GENERIC_BULLETS, QUERY_MODS, TYPES, TYPE_INDEX)
from cli import POSITIVE_INT, SAMPLE_SEED, add_alias, add_common_args, progress, run_cli
from fileio import parquet_writer, write_json
from paths import EXAMPLES_FILE, PRODUCTS_FILE
from utils import Timer, UserError, log

SIZES = {
    # products, queries, mean judged per query
    "tiny": dict(n_products=400, n_queries=60, judged=12),
    "small": dict(n_products=4000, n_queries=600, judged=16),
    "full": dict(n_products=1_800_000, n_queries=130_000, judged=20),  # ESCI: 130k queries, 2.6M examples
}
LABEL_TARGET = {"E": 0.65, "S": 0.22, "C": 0.03, "I": 0.10}
LOCALES = (("us", 0.88), ("es", 0.07), ("jp", 0.05))



def _ptype_tables():
    """Per-type sizes as numpy arrays for vectorised generation."""
    n_brand = np.array([len(t.brands) for t in TYPES])
    n_attr = np.array([len(t.attr[0]) if t.attr else 0 for t in TYPES])
    n_pack = np.array([len(t.packs) for t in TYPES])
    has_feat = np.array([bool(t.feature) for t in TYPES])
    has_color = np.array([t.colors for t in TYPES])
    return n_brand, n_attr, n_pack, has_feat, has_color


class Catalog:
    """Product attributes as compact arrays (index = product row); text rendered on demand."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        n_brand, n_attr, n_pack, has_feat, has_color = _ptype_tables()
        # families of 1-6 variants (a model sold in several colours / sizes / packs)
        sizes = np.minimum(rng.geometric(0.45, size=n), 6)
        csum = np.cumsum(sizes)
        n_fam = int(np.searchsorted(csum, n) + 1)
        fam = np.repeat(np.arange(n_fam), sizes[:n_fam])[:n]
        # family-level attributes; type popularity is uneven like a real catalog
        pop = rng.gamma(2.0, 1.0, size=len(TYPES))
        ftype = rng.choice(len(TYPES), size=n_fam, p=pop / pop.sum())
        fbrand = (rng.random(n_fam) * n_brand[ftype]).astype(np.int16)
        ffeat = np.where(has_feat[ftype], rng.random(n_fam) < 0.45, -1).astype(np.int8)
        floc = rng.choice(len(LOCALES), size=n_fam, p=[p for _, p in LOCALES]).astype(np.int8)
        fadj = rng.integers(0, len(ADJ), size=n_fam).astype(np.int8)
        fmodel = rng.integers(0, 36**5, size=n_fam)
        self.type = ftype[fam].astype(np.int16)
        self.brand = fbrand[fam]
        self.feature = ffeat[fam]
        self.locale = floc[fam]
        self.adj = fadj[fam]
        self.model = fmodel[fam]
        self.family = fam.astype(np.int32)
        t = self.type
        self.color = np.where(has_color[t], rng.integers(0, len(COLORS), size=n), -1).astype(np.int8)
        self.attr = np.where(n_attr[t] > 0, (rng.random(n) * np.maximum(n_attr[t], 1)).astype(int), -1).astype(np.int8)
        self.pack = np.where(n_pack[t] > 0, (rng.random(n) * np.maximum(n_pack[t], 1)).astype(int), -1).astype(np.int8)
        self.name = rng.integers(0, 3, size=n).astype(np.int8)
        self.missing = rng.random((n, 4))  # description, bullets, brand, color field missing draws
        self.n = n
        # ASIN-like ids: an affine bijection of the row number onto 8 base-36 digits
        mult, off = 2_654_435_761, seed * 7919 + 12345
        ids = (np.arange(n, dtype=np.int64) * mult + off) % (36**8)
        self.ids = np.array(["B0" + np.base_repr(int(v), 36).rjust(8, "0") for v in ids], dtype=object)
        # ~1% of non-us products reuse the id of a us product (ASINs are shared across locales)
        nonus = np.flatnonzero(self.locale != 0)
        us = np.flatnonzero(self.locale == 0)
        if len(nonus) and len(us):
            k = max(1, len(nonus) // 100)
            self.ids[rng.choice(nonus, size=k, replace=False)] = self.ids[rng.choice(us, size=k, replace=False)]
        # row lists per (locale, type) for candidate sampling
        order = np.lexsort((self.type, self.locale))
        key = self.locale[order].astype(np.int64) * 1000 + self.type[order]
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1, [n]])
        self.by_loc_type = {int(key[a]): order[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a}
        fam_starts = np.concatenate([[0], np.flatnonzero(np.diff(self.family)) + 1, [n]])
        self.fam_start = fam_starts

    # -- text ------------------------------------------------------------------------------
    def model_number(self, i: int) -> str:
        pt = TYPES[self.type[i]]
        pre = "".join(w[0] for w in pt.brands[self.brand[i]].split()).upper()[:2]
        return f"{pre}{np.base_repr(int(self.model[i]), 36).rjust(5, '0')}"

    def _attr_title(self, i: int) -> str | None:
        pt = TYPES[self.type[i]]
        return pt.attr[1].format(v=pt.attr[0][self.attr[i]]) if self.attr[i] >= 0 else None

    def render_chunk(self, start: int, stop: int, rng: np.random.Generator) -> dict[str, list]:
        """Product rows [start, stop) as ESCI columns; all random draws are made up front."""
        n = stop - start
        neg_phrase = rng.random(n) < 0.5
        upper_first = rng.random(n) < 0.3
        generic = rng.integers(0, len(GENERIC_BULLETS), size=n)
        bperm = rng.integers(0, 6, size=n)
        d1 = rng.integers(0, len(DESCRIPTIONS), size=n)
        d2 = (d1 + rng.integers(1, len(DESCRIPTIONS), size=n)) % len(DESCRIPTIONS)
        cols: dict[str, list] = {f.name: [] for f in PRODUCTS_SCHEMA}
        for k, i in enumerate(range(start, stop)):
            pt = TYPES[self.type[i]]
            brand = pt.brands[self.brand[i]]
            name = pt.names[self.name[i]]
            parts = [f"{brand} {ADJ[self.adj[i]]} {name} {self.model_number(i)}"]
            feat = self.feature[i]
            if feat == 1:
                parts.append(pt.feature[0])
            elif feat == 0 and pt.feature[2] and neg_phrase[k]:
                parts.append(pt.feature[2])
            a = pt.attr[1].format(v=pt.attr[0][self.attr[i]]) if self.attr[i] >= 0 else None
            if a:
                parts.append(a)
            color = COLORS[self.color[i]] if self.color[i] >= 0 else None
            if color:
                parts.append(color)
            title = ", ".join(parts)
            if self.pack[i] >= 0 and pt.packs[self.pack[i]] > 1:
                title += f" ({pt.pack_fmt.format(v=pt.packs[self.pack[i]])})"
            spec = a or (pt.feature[0] if feat == 1 else name)
            bl = [pt.bullets[j] for j in _PERMS3[bperm[k]] if j < len(pt.bullets)]
            if a:
                bl.insert(1, f"{a.upper()}: choose the right {spec.lower()} for you")
            bl.append(GENERIC_BULLETS[generic[k]])
            if upper_first[k]:
                bl[0] = bl[0].upper()
            m = self.missing[i]
            cols["product_id"].append(self.ids[i])
            cols["product_title"].append(title)
            cols["product_description"].append(
                (DESCRIPTIONS[d1[k]] + " " + DESCRIPTIONS[d2[k]]).format(
                    brand=brand, name=name, name_low=name.lower(), spec=spec) if m[0] > 0.55 else None)
            cols["product_bullet_point"].append("\n".join(bl) if m[1] > 0.30 else None)
            cols["product_brand"].append(brand if m[2] > 0.08 else None)
            cols["product_color"].append(color if (color and m[3] > 0.35) else None)
            cols["product_locale"].append(LOCALES[self.locale[i]][0])
        return cols


_PERMS3 = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


# ---------------------------------------------------------------------------------------------
# Queries and judgements
# ---------------------------------------------------------------------------------------------
def _typo(q: str, rng: np.random.Generator) -> str:
    """One keyboard slip: swap, drop or double a letter inside a word of 4+ letters."""
    words = q.split()
    cand = [k for k, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not cand:
        return q
    k = int(rng.choice(cand))
    w = words[k]
    j = int(rng.integers(1, len(w) - 1))
    op = rng.integers(3)
    w = (w[:j] + w[j + 1] + w[j] + w[j + 2:]) if op == 0 else (w[:j] + w[j + 1:]) if op == 1 else (w[:j] + w[j] + w[j:])
    words[k] = w
    return " ".join(words)


INTENTS = ("generic", "brand", "attr", "attr", "feature", "model", "long")
INTENT_CDF = np.cumsum([0.18, 0.14, 0.2, 0.16, 0.14, 0.06, 0.12])
INTENT_CDF /= INTENT_CDF[-1]


def _pick(options, rng: np.random.Generator) -> str:
    """rng.choice(options) without its per-call array conversion (the same random stream)."""
    return str(options[int(rng.integers(0, len(options)))])


def make_query(cat: Catalog, seed_row: int, rng: np.random.Generator) -> tuple[str, dict]:
    """A query text and its constraints, drawn from the seed product's attributes."""
    i = seed_row
    t = int(cat.type[i])
    pt = TYPES[t]
    alias = _pick(pt.aliases, rng)
    cons: dict = {"type": t}
    intent = INTENTS[int(np.searchsorted(INTENT_CDF, rng.random(), side="right"))]
    if intent == "feature" and cat.feature[i] < 0:
        intent = "attr"
    if intent == "attr" and cat.attr[i] < 0 and cat.pack[i] < 0 and cat.color[i] < 0:
        intent = "brand"
    words = [alias]
    brand = pt.brands[cat.brand[i]]
    if intent == "brand":
        cons["brand"] = int(cat.brand[i])
        words = [brand.lower(), alias] if rng.random() < 0.8 else [alias, brand.lower()]
    elif intent == "attr":
        opts = [k for k in ("attr", "pack", "color") if getattr(cat, k)[i] >= 0]
        chosen = list(rng.choice(opts, size=min(len(opts), int(rng.integers(1, 3))), replace=False))
        for k in chosen:
            cons[k] = int(getattr(cat, k)[i])
            if k == "color":
                words.insert(0, COLORS[cat.color[i]].lower())
            elif k == "attr":
                words.append(_pick(pt.attr[2], rng).format(v=pt.attr[0][cat.attr[i]]).lower())
            else:
                v = pt.packs[cat.pack[i]]
                words.append(_pick((f"{v} pack", f"{v} count", f"pack of {v}", f"{v}pk"), rng))
        if rng.random() < 0.25:
            cons["brand"] = int(cat.brand[i])
            words.insert(0, brand.lower())
    elif intent == "feature":
        has = int(cat.feature[i])
        cons["feature"] = has
        f = pt.feature[1]
        if has:
            words = [alias, f"with {f}"] if rng.random() < 0.6 else [f, alias]
        else:
            words = [alias, _pick((f"without {f}", f"no {f}", f"without {f}"), rng)]
    elif intent == "model":
        cons["family"] = int(cat.family[i])
        mn = cat.model_number(i).lower()
        words = [mn, brand.lower(), alias] if rng.random() < 0.5 else [brand.lower(), mn]
    elif intent == "long":
        extra = []
        if cat.color[i] >= 0:
            cons["color"] = int(cat.color[i])
            extra.append(f"in {COLORS[cat.color[i]].lower()}")
        if cat.feature[i] == 1:
            cons["feature"] = 1
            extra.append(f"with {pt.feature[1]}")
        lead = _pick(("i want a", "looking for a", "i need a good", "I want to buy a"), rng)
        words = [lead, alias, "that is"] + (extra or ["good quality"]) + [_pick(("", "and not too expensive", "for my family"), rng)]
    mod = _pick(QUERY_MODS, rng)
    if mod and intent in ("generic", "brand"):
        words.append(mod) if rng.random() < 0.5 else words.insert(0, mod)
    q = " ".join(w for w in words if w)
    r = rng.random()
    if r < 0.08:
        q = _typo(q, rng)
    elif r < 0.10:
        q = "!" + q
    elif r < 0.13:
        q = q + _pick(("?", ".", " ,", "..."), rng)
    if intent != "long" and rng.random() < 0.9:
        q = q.lower()
    return q, cons


def _relation_table(attr: str) -> np.ndarray:
    """table[t][u] is True when type u is in TYPES[t].<attr> (substitutes or complements)."""
    table = np.zeros((len(TYPES), len(TYPES)), dtype=bool)
    for i, t in enumerate(TYPES):
        table[i, [TYPE_INDEX[k] for k in getattr(t, attr)]] = True
    return table


SUBSTITUTE_OF = _relation_table("substitutes")
COMPLEMENT_OF = _relation_table("complements")


def label_candidates(cat: Catalog, cons: dict, rows: np.ndarray) -> np.ndarray:
    """ESCI label of each candidate row for a query's constraints (vectorised)."""
    t = cons["type"]
    misses = np.zeros(len(rows), dtype=np.int8)
    for k in ("brand", "color", "attr", "pack", "feature", "family"):
        if k in cons:
            misses += (getattr(cat, k)[rows] != cons[k])
    ctype = cat.type[rows]
    same = ctype == t
    subs = SUBSTITUTE_OF[t][ctype]
    comp = COMPLEMENT_OF[t][ctype]
    soft = np.zeros(len(rows), dtype=np.int8)  # substitutes are judged on brand/colour/feature only
    for k in ("brand", "color", "feature"):
        if k in cons:
            soft += (getattr(cat, k)[rows] != cons[k])
    lab = np.full(len(rows), "I", dtype="<U1")
    lab[comp] = "C"
    lab[subs & (soft == 0)] = "S"
    lab[same & (misses == 1)] = "S"
    lab[same & (misses == 0)] = "E"
    return lab


def judge(cat: Catalog, cons: dict, seed_row: int, n_judged: int, rng: np.random.Generator):
    """Pick ~n_judged products to judge for a query, near the ESCI label mix."""
    t, loc = cons["type"], int(cat.locale[seed_row])
    pt = TYPES[t]
    pools = [cat.by_loc_type.get(loc * 1000 + t, np.array([], dtype=np.int64))]
    f = cat.family[seed_row]
    pools.append(np.arange(cat.fam_start[f], cat.fam_start[f + 1]))
    for k in pt.substitutes + pt.complements + pt.lookalikes:
        pools.append(cat.by_loc_type.get(loc * 1000 + TYPE_INDEX[k], np.array([], dtype=np.int64)))
    cand = []
    for j, p in enumerate(pools):  # the query's own type is searched deeper than the others
        cap = 400 if j == 0 else 60
        if len(p):
            cand.append(p if len(p) <= cap else p[rng.integers(0, len(p), size=cap)])
    cand = np.unique(np.concatenate(cand + [np.array([seed_row])]))
    labels = label_candidates(cat, cons, cand)
    # per-query mix varies around the target (broad queries have more E, narrow ones more S/I)
    mix = rng.dirichlet([LABEL_TARGET[k] * 30 for k in "ESCI"])
    mix[2] *= 1.5  # complements exist for a third of the types only
    want = {k: int(round(n_judged * m)) for k, m in zip("ESCI", mix)}
    picked = [np.array([seed_row])]
    for k in "ESIC":
        rows = cand[(labels == k) & (cand != seed_row)]
        take = want[k] - (1 if k == "E" else 0)
        if take > 0 and len(rows):
            picked.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    rows = np.unique(np.concatenate(picked))
    for k in "ESIC":  # narrow queries run out of some labels: fill in label priority order
        short = n_judged - len(rows)
        if short <= 0:
            break
        rest = np.setdiff1d(cand[labels == k], rows)
        if len(rest):
            rows = np.concatenate([rows, rng.choice(rest, size=min(short, len(rest)), replace=False)])
    return rows, labels[np.searchsorted(cand, rows)]  # cand is sorted (np.unique)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
PRODUCTS_SCHEMA = pa.schema([(c, pa.string()) for c in
                             ["product_id", "product_title", "product_description", "product_bullet_point",
                              "product_brand", "product_color", "product_locale"]])
EXAMPLES_SCHEMA = pa.schema([("example_id", pa.int64()), ("query", pa.string()), ("query_id", pa.int64()),
                             ("product_id", pa.string()), ("product_locale", pa.string()),
                             ("esci_label", pa.string()), ("small_version", pa.int64()),
                             ("large_version", pa.int64()), ("split", pa.string())])


def make_sample_catalog(raw_dir: Path, size: str = "small", seed: int = SAMPLE_SEED, chunk: int = 100_000,
                        n_products: int | None = None, n_queries: int | None = None, overwrite: bool = True) -> dict:
    """Write the two ESCI parquet files for the chosen size into raw_dir; return the summary.
    With overwrite=False (the scripts without --overwrite) existing raw files are an error."""
    spec = dict(SIZES[size])
    if n_products:
        spec["n_products"] = n_products
    if n_queries:
        spec["n_queries"] = n_queries
    raw_dir = Path(raw_dir)
    existing = [raw_dir / n for n in (EXAMPLES_FILE, PRODUCTS_FILE) if (raw_dir / n).exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} exists; pass --overwrite to replace the raw files, or choose another --raw-dir")
    raw_dir.mkdir(parents=True, exist_ok=True)
    with Timer() as tm:
        cat = Catalog(spec["n_products"], seed)
        rng = np.random.default_rng(seed + 1)
        show = spec["n_products"] >= 200_000
        with parquet_writer(raw_dir / PRODUCTS_FILE, PRODUCTS_SCHEMA) as w:
            for s in progress(range(0, cat.n, chunk), desc="products", unit="chunk", disable=not show):
                cols = cat.render_chunk(s, min(cat.n, s + chunk), rng)
                w.write_table(pa.Table.from_pydict(cols, schema=PRODUCTS_SCHEMA))
        qrng = np.random.default_rng(seed + 2)
        # queries from random seed products, drawn until n_queries distinct texts exist (the same
        # text is one query with one id and one split, as in ESCI); ~70/30 train/test by query
        label_counts = {k: 0 for k in "ESCI"}
        example_id, seen_q = 0, {}
        bar = progress(total=spec["n_queries"], desc="queries", unit="q", disable=not show)
        with parquet_writer(raw_dir / EXAMPLES_FILE, EXAMPLES_SCHEMA) as w:
            buf: dict[str, list] = {f.name: [] for f in EXAMPLES_SCHEMA}
            for attempt in range(20 * spec["n_queries"]):
                if len(seen_q) >= spec["n_queries"]:
                    break
                srow = int(qrng.integers(0, cat.n))
                q, cons = make_query(cat, srow, qrng)
                if q in seen_q:
                    continue
                qn = len(seen_q)
                seen_q[q] = qn
                bar.update(1)
                n_j = int(np.clip(qrng.poisson(spec["judged"]), 4, 3 * spec["judged"]))
                rows, labels = judge(cat, cons, srow, n_j, qrng)
                split = "train" if qrng.random() < 0.7 else "test"
                small = int(qrng.random() < 0.4)
                for r, lab in zip(rows, labels):
                    buf["example_id"].append(example_id); example_id += 1
                    buf["query"].append(q); buf["query_id"].append(qn)
                    buf["product_id"].append(cat.ids[r]); buf["product_locale"].append(LOCALES[cat.locale[r]][0])
                    buf["esci_label"].append(str(lab)); buf["small_version"].append(small)
                    buf["large_version"].append(1); buf["split"].append(split)
                    label_counts[str(lab)] += 1
                if len(buf["example_id"]) >= chunk:
                    w.write_table(pa.Table.from_pydict(buf, schema=EXAMPLES_SCHEMA))
                    buf = {k: [] for k in buf}
            if buf["example_id"]:
                w.write_table(pa.Table.from_pydict(buf, schema=EXAMPLES_SCHEMA))
        bar.close()
    total = sum(label_counts.values())
    summary = {"size": size, "seed": seed, "n_products": cat.n, "n_queries": len(seen_q),
               "n_examples": total, "label_mix": {k: round(v / max(total, 1), 4) for k, v in label_counts.items()},
               "n_product_types": len(TYPES), "seconds": round(tm.seconds, 2)}
    write_json(raw_dir / "sample_catalog.json", summary)
    log.info("sample catalog %s: %d products, %d queries, %d examples, labels %s (%.1fs) -> %s",
             size, cat.n, len(seen_q), total, summary["label_mix"], tm.seconds, raw_dir)
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--raw-dir", type=Path, default=Path("data/raw"))
    p.add_argument("--n-products", type=POSITIVE_INT, default=None, help="override the size's product count")
    p.add_argument("--n-queries", type=POSITIVE_INT, default=None, help="override the size's query count")
    p.add_argument("--sample-seed", type=int, default=SAMPLE_SEED,
                   help=f"which sample catalog to build (default: {SAMPLE_SEED}; prepare --make-sample and "
                        "run_workflow.sh build the same one)")
    add_alias(p, "--seed", "--sample-seed")
    add_common_args(p, data_dir=False, seed=False, overwrite="the two raw files in --raw-dir")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    return make_sample_catalog(args.raw_dir, args.size, args.sample_seed, n_products=args.n_products,
                               n_queries=args.n_queries, overwrite=args.overwrite)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
