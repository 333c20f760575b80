"""Generate the built-in sample catalog: ESCI-shaped raw data, deterministic from a seed.

Writes, into --raw-dir, exactly the two ESCI files with the ESCI schemas:
  shopping_queries_dataset_examples.parquet  (example_id, query, query_id, product_id, product_locale,
                                               esci_label, small_version, large_version, split)
  shopping_queries_dataset_products.parquet  (product_id, product_title, product_description,
                                               product_bullet_point, product_brand, product_color,
                                               product_locale)
plus sample_catalog.json (size, seed, counts, label mix).

Products come in families (one model in several colours / sizes / pack counts) of 28 product
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from utils import (EXAMPLES_FILE, PRODUCTS_FILE, Timer, add_common_args, log, parquet_writer,
                   run_cli, write_json)

SIZES = {
    # products, queries, mean judged per query
    "tiny": dict(n_products=400, n_queries=60, judged=12),
    "small": dict(n_products=4000, n_queries=600, judged=16),
    "full": dict(n_products=1_800_000, n_queries=130_000, judged=20),  # ESCI: 130k queries, 2.6M examples
}
LABEL_TARGET = {"E": 0.65, "S": 0.22, "C": 0.03, "I": 0.10}
LOCALES = (("us", 0.88), ("es", 0.07), ("jp", 0.05))
COLORS = ("Black", "White", "Navy Blue", "Red", "Grey", "Silver", "Rose Gold", "Green", "Blue",
          "Pink", "Beige", "Purple", "Olive", "Matte Black")


@dataclass(frozen=True)
class PType:
    key: str
    names: tuple            # title nouns
    aliases: tuple          # how shoppers name it in queries
    brands: tuple
    attr: tuple = ()        # (values, title format, query formats)
    packs: tuple = ()       # pack counts (0 = sold single)
    pack_fmt: str = "{v} Pack"
    feature: tuple = ()     # (title phrase, query word, negative title phrase)
    colors: bool = True
    substitutes: tuple = ()
    complements: tuple = ()
    lookalikes: tuple = ()
    bullets: tuple = ()


def _t(key, names, aliases, brands, **kw) -> PType:
    return PType(key, tuple(names), tuple(aliases), tuple(brands), **kw)


SIZES_SHOE = (("6", "7", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12", "13"), "Size {v}",
              ("size {v}", "sz {v}", "{v}"))
SIZES_APPAREL = (("Small", "Medium", "Large", "X-Large", "XX-Large"), "Size {v}",
                 ("{v}", "size {v}"))
PHONES = (("iPhone 15", "iPhone 14", "iPhone 13", "Galaxy S24", "Galaxy S23", "Pixel 8"),
          "for {v}", ("{v}", "for {v}"))

TYPES: tuple[PType, ...] = (
    _t("running_shoes", ["Running Shoes", "Road Running Shoe", "Athletic Running Sneakers"],
       ["running shoes", "running sneakers", "jogging shoes", "runners shoes"],
       ["Nike", "Adidas", "Brooks", "ASICS", "New Balance", "Saucony"], attr=SIZES_SHOE,
       feature=("Waterproof", "waterproof", ""), substitutes=("walking_shoes",),
       complements=("shoe_laces",), lookalikes=("running_shorts",),
       bullets=("Breathable engineered mesh upper", "Responsive foam midsole cushions every stride",
                "Rubber outsole for durable traction on road and track")),
    _t("walking_shoes", ["Walking Shoes", "Comfort Walking Sneaker", "Slip-On Walking Shoe"],
       ["walking shoes", "walking sneakers", "comfortable shoes for walking"],
       ["Skechers", "New Balance", "Clarks", "Hoka"], attr=SIZES_SHOE,
       substitutes=("running_shoes",), complements=("shoe_laces",), lookalikes=("running_shorts",),
       bullets=("Memory foam insole", "Lightweight flexible sole", "Easy slip-on design")),
    _t("running_shorts", ["Running Shorts", "Athletic Shorts with Liner", "Workout Gym Shorts"],
       ["running shorts", "gym shorts", "athletic shorts"],
       ["Nike", "Under Armour", "Adidas", "Baleaf"], attr=SIZES_APPAREL,
       feature=("with Zipper Pocket", "pockets", ""), lookalikes=("running_shoes",),
       bullets=("Quick-dry moisture wicking fabric", "Elastic waistband with drawcord",
                "Reflective details for low light runs")),
    _t("shoe_laces", ["Shoe Laces", "Flat Shoelaces", "No Tie Elastic Laces"],
       ["shoe laces", "shoelaces", "replacement laces"], ["Shoeslulu", "Xpand", "Lock Laces"],
       attr=(("36 inch", "45 inch", "54 inch", "63 inch"), "{v}", ("{v}",)), packs=(1, 2, 3, 5),
       pack_fmt="{v} Pairs", lookalikes=("running_shoes",),
       bullets=("Fits sneakers, boots and dress shoes", "Strong polyester weave")),
    _t("bathroom_fan", ["Bathroom Exhaust Fan", "Ventilation Fan", "Ceiling Mount Bath Fan"],
       ["bathroom exhaust fan", "bathroom fan", "exhaust fan bathroom", "bath vent fan"],
       ["Broan-NuTone", "Panasonic", "Delta BreezSignature", "Hunter"],
       attr=(("50", "70", "80", "90", "110", "150"), "{v} CFM", ("{v} cfm", "{v}cfm")),
       feature=("with LED Light", "light", "No Light"), colors=False,
       complements=("duct_kit",), lookalikes=("ceiling_fan",),
       bullets=("Quiet operation rated at 0.8 sones", "Easy installation in new or existing ceilings",
                "Energy Star certified motor")),
    _t("ceiling_fan", ["Ceiling Fan", "Indoor Ceiling Fan with Remote", "Flush Mount Ceiling Fan"],
       ["ceiling fan", "ceiling fans", "fan for bedroom ceiling"],
       ["Hunter", "Honeywell", "Minka-Aire", "Harbor Breeze"],
       attr=(("42 inch", "44 inch", "52 inch", "60 inch"), "{v}", ("{v}",)),
       feature=("with LED Light", "light", "No Light"), lookalikes=("bathroom_fan",),
       bullets=("Reversible motor for year-round comfort", "5 blades with dual finish")),
    _t("duct_kit", ["Flexible Duct Kit", "Vent Hose Kit", "Aluminum Ducting Kit"],
       ["duct kit", "flexible duct", "exhaust fan duct hose"], ["Broan-NuTone", "iPower", "Dundas Jafine"],
       attr=(("4 inch", "6 inch"), "{v} x 8 ft", ("{v}",)), colors=False, lookalikes=("bathroom_fan",),
       bullets=("Includes two clamps", "Fits standard bathroom exhaust fans")),
    _t("aa_batteries", ["AA Batteries", "Double A Alkaline Batteries", "AA Battery"],
       ["aa batteries", "double a batteries", "aa battery"], ["Duracell", "Energizer", "Amazon Basics", "Panasonic"],
       packs=(4, 8, 12, 24, 48), pack_fmt="{v} Count", feature=("Rechargeable", "rechargeable", ""),
       colors=False, substitutes=("aaa_batteries",), complements=("battery_charger",),
       lookalikes=("aaa_batteries",), bullets=("Long-lasting power for everyday devices",
                                                "Guaranteed 10 years in storage")),
    _t("aaa_batteries", ["AAA Batteries", "Triple A Alkaline Batteries", "AAA Battery"],
       ["aaa batteries", "triple a batteries", "aaa battery"], ["Duracell", "Energizer", "Amazon Basics", "Panasonic"],
       packs=(4, 8, 12, 24, 36), pack_fmt="{v} Count", feature=("Rechargeable", "rechargeable", ""),
       colors=False, substitutes=("aa_batteries",), complements=("battery_charger",),
       lookalikes=("aa_batteries",), bullets=("Ideal for remotes, toys and flashlights",
                                               "Leak-resistant construction")),
    _t("battery_charger", ["Battery Charger", "Smart Charger for AA AAA", "Rechargeable Battery Charger"],
       ["battery charger", "aa battery charger", "charger for rechargeable batteries"],
       ["Energizer", "Panasonic", "EBL", "Amazon Basics"], colors=False,
       lookalikes=("aa_batteries",), bullets=("LED charge indicators", "Charges 4 batteries at once")),
    _t("water_bottle", ["Insulated Water Bottle", "Stainless Steel Water Bottle", "Sports Water Bottle"],
       ["water bottle", "insulated water bottle", "metal water bottle", "hydro bottle"],
       ["Hydro Flask", "Contigo", "Owala", "CamelBak", "Simple Modern"],
       attr=(("16 oz", "24 oz", "32 oz", "40 oz"), "{v}", ("{v}", "{v}unce")),
       feature=("with Straw Lid", "straw", ""), complements=("bottle_brush",),
       lookalikes=("bottle_brush",), bullets=("Keeps drinks cold 24 hours", "BPA-free and leak proof lid",
                                              "Fits most cup holders")),
    _t("bottle_brush", ["Bottle Brush", "Bottle Cleaning Brush Set", "Long Handle Bottle Cleaner"],
       ["bottle brush", "bottle cleaner brush", "water bottle cleaning brush"], ["OXO", "Holikme", "Fuller Brush"],
       packs=(1, 3, 5), pack_fmt="{v} Piece Set", lookalikes=("water_bottle",),
       bullets=("Reaches the bottom of tall bottles", "Soft bristles will not scratch")),
    _t("phone_case", ["Phone Case", "Protective Case", "Slim Shockproof Case"],
       ["phone case", "case", "phone cover"], ["OtterBox", "Spigen", "Caseology", "ESR"], attr=PHONES,
       feature=("with Kickstand", "kickstand", ""), complements=("screen_protector",),
       lookalikes=("pencil_case",), bullets=("Raised edges protect screen and camera",
                                             "Military grade drop protection", "Wireless charging compatible")),
    _t("screen_protector", ["Screen Protector", "Tempered Glass Screen Protector", "Privacy Screen Protector"],
       ["screen protector", "tempered glass", "glass screen protector"], ["ZAGG", "Spigen", "amFilm", "ESR"],
       attr=PHONES, packs=(1, 2, 3), pack_fmt="{v} Pack", colors=False, lookalikes=("phone_case",),
       bullets=("9H hardness tempered glass", "Bubble-free installation frame included")),
    _t("pencil_case", ["Pencil Case", "Large Capacity Pencil Pouch", "Zipper Pencil Box"],
       ["pencil case", "pencil pouch", "pen case"], ["Five Star", "CICIMELON", "Yarwo"],
       lookalikes=("phone_case",), bullets=("Three compartments for pens and markers",
                                            "Durable canvas with smooth zipper")),
    _t("wireless_earbuds", ["Wireless Earbuds", "True Wireless Bluetooth Earbuds", "Earbuds with Charging Case"],
       ["wireless earbuds", "bluetooth earbuds", "earbuds", "ear buds wireless"],
       ["Sony", "JBL", "Soundcore", "Samsung", "Jabra"], feature=("Noise Cancelling", "noise cancelling", ""),
       substitutes=("headphones",), complements=("earbud_tips",), lookalikes=("headphones",),
       bullets=("Up to 30 hours of playtime with case", "IPX5 sweat resistant", "Touch controls and built-in mic")),
    _t("headphones", ["Over-Ear Headphones", "Wireless Bluetooth Headphones", "Studio Headphones"],
       ["headphones", "over ear headphones", "bluetooth headphones", "wireless headphones"],
       ["Sony", "Bose", "JBL", "Audio-Technica", "Sennheiser"], feature=("with Microphone", "mic", "No Mic"),
       substitutes=("wireless_earbuds",), lookalikes=("wireless_earbuds",),
       bullets=("Plush memory foam ear cushions", "40mm drivers with deep bass", "Foldable design with carry case")),
    _t("earbud_tips", ["Replacement Ear Tips", "Silicone Earbud Tips", "Memory Foam Ear Tips"],
       ["ear tips", "earbud tips", "replacement ear tips"], ["Comply", "Sony", "JBL"],
       attr=(("Small", "Medium", "Large", "Assorted"), "Size {v}", ("{v}",)), packs=(3, 6, 12),
       pack_fmt="{v} Pairs", colors=False, lookalikes=("wireless_earbuds",),
       bullets=("Improves seal and noise isolation", "Soft medical grade silicone")),
    _t("bluetooth_speaker", ["Bluetooth Speaker", "Portable Wireless Speaker", "Outdoor Speaker"],
       ["bluetooth speaker", "portable speaker", "wireless speaker", "speaker bluetooth"],
       ["JBL", "Bose", "Sony", "Soundcore", "Ultimate Ears"], feature=("Waterproof", "waterproof", ""),
       lookalikes=("headphones",), bullets=("360 degree sound", "12 hour battery", "Pair two speakers for stereo")),
    _t("electric_toothbrush", ["Electric Toothbrush", "Rechargeable Sonic Toothbrush", "Power Toothbrush"],
       ["electric toothbrush", "sonic toothbrush", "rechargeable toothbrush"],
       ["Oral-B", "Philips Sonicare", "Fairywill", "Aquasonic"], feature=("with Pressure Sensor", "pressure sensor", ""),
       complements=("brush_heads",), lookalikes=("brush_heads",),
       bullets=("2 minute timer with quadpacer", "Up to 3 weeks per charge", "Removes up to 100% more plaque")),
    _t("brush_heads", ["Replacement Brush Heads", "Toothbrush Heads", "Replacement Toothbrush Heads"],
       ["replacement brush heads", "toothbrush heads", "brush heads"], ["Oral-B", "Philips Sonicare", "Nuvia", "Sensodyne"],
       attr=(("Oral-B", "Sonicare"), "for {v}", ("for {v}", "{v}")), packs=(2, 4, 8, 10), pack_fmt="{v} Count",
       colors=False, lookalikes=("electric_toothbrush",),
       bullets=("Indicator bristles fade to remind you to replace", "Fits click-on handles")),
    _t("coffee_maker", ["Coffee Maker", "Programmable Drip Coffee Maker", "Coffee Machine"],
       ["coffee maker", "coffee machine", "drip coffee maker"], ["Cuisinart", "Mr. Coffee", "Hamilton Beach", "BLACK+DECKER"],
       attr=(("4 Cup", "5 Cup", "12 Cup", "14 Cup"), "{v}", ("{v}",)), feature=("with Grinder", "grinder", ""),
       complements=("coffee_filters",), lookalikes=("coffee_filters",),
       bullets=("Brew strength control", "24 hour programmability", "Auto shutoff after 2 hours")),
    _t("coffee_filters", ["Coffee Filters", "Basket Coffee Filters", "Cone Coffee Filters"],
       ["coffee filters", "coffee filter", "paper coffee filters"], ["Melitta", "Bunn", "If You Care", "Mr. Coffee"],
       attr=(("#2", "#4", "8-12 Cup Basket"), "{v}", ("{v}",)), packs=(100, 200, 500), pack_fmt="{v} Count",
       colors=False, lookalikes=("coffee_maker",), bullets=("Unbleached natural paper", "Double crimped to prevent bursting")),
    _t("yoga_mat", ["Yoga Mat", "Non Slip Exercise Mat", "Thick Fitness Mat"],
       ["yoga mat", "exercise mat", "workout mat"], ["Gaiam", "Manduka", "BalanceFrom", "Lululemon"],
       attr=(("4mm", "6mm", "8mm", "1/2 inch"), "{v} Thick", ("{v}", "{v} thick")),
       feature=("with Carrying Strap", "strap", ""), complements=("yoga_blocks",), lookalikes=("yoga_blocks",),
       bullets=("Non-slip textured surface", "Free of 6P phthalates", "Cushions joints on hard floors")),
    _t("yoga_blocks", ["Yoga Blocks", "Foam Yoga Block", "Cork Yoga Block"],
       ["yoga blocks", "yoga block", "foam blocks"], ["Gaiam", "Manduka", "Reehut"], packs=(1, 2),
       pack_fmt="{v} Pack", complements=(), lookalikes=("yoga_mat",),
       bullets=("Lightweight high density foam", "Beveled edges for comfortable grip")),
    _t("dog_collar", ["Dog Collar", "Adjustable Nylon Dog Collar", "Padded Leather Dog Collar"],
       ["dog collar", "collar for dogs", "puppy collar"], ["Blueberry Pet", "PetSafe", "Rogz"],
       attr=(("Small", "Medium", "Large", "X-Large"), "Size {v}", ("{v}", "for {v} dogs")),
       feature=("Reflective", "reflective", ""), complements=("dog_leash",), lookalikes=("cat_collar",),
       bullets=("Quick release buckle", "Rust resistant D-ring for leash")),
    _t("dog_leash", ["Dog Leash", "Heavy Duty Dog Leash", "Retractable Dog Leash"],
       ["dog leash", "leash for dogs", "dog lead"], ["Blueberry Pet", "Flexi", "PetSafe", "Ruffwear"],
       attr=(("4 ft", "6 ft", "10 ft", "16 ft"), "{v}", ("{v}",)), feature=("Reflective", "reflective", ""),
       lookalikes=("dog_collar",), bullets=("Padded handle for comfort", "Strong swivel clip")),
    _t("cat_collar", ["Cat Collar", "Breakaway Cat Collar with Bell", "Kitten Collar"],
       ["cat collar", "breakaway cat collar", "kitten collar"], ["Rogz", "PetSafe", "Blueberry Pet"],
       packs=(1, 2, 6), pack_fmt="{v} Pack", lookalikes=("dog_collar",),
       bullets=("Safety breakaway buckle", "Bell helps you know where your cat is")),
    _t("usb_c_cable", ["USB C Cable", "USB-C to USB-C Charging Cable", "Braided Type C Charger Cable"],
       ["usb c cable", "type c cable", "usb c charger cable", "usbc cord"], ["Anker", "Amazon Basics", "Belkin", "UGREEN"],
       attr=(("3 ft", "6 ft", "10 ft"), "{v}", ("{v}",)), packs=(1, 2, 3), pack_fmt="{v} Pack",
       lookalikes=("lightning_cable",), bullets=("Supports 60W fast charging", "Nylon braided for durability")),
    _t("lightning_cable", ["Lightning Cable", "iPhone Charger Cable", "MFi Certified Lightning Cable"],
       ["lightning cable", "iphone charger cable", "iphone cord"], ["Anker", "Amazon Basics", "Belkin", "Apple"],
       attr=(("3 ft", "6 ft", "10 ft"), "{v}", ("{v}",)), packs=(1, 2, 3), pack_fmt="{v} Pack",
       lookalikes=("usb_c_cable",), bullets=("MFi certified for iPhone", "Tested to bend 25,000 times")),
    _t("power_bank", ["Portable Charger Power Bank", "Power Bank", "Battery Pack"],
       ["power bank", "portable charger", "battery pack for phone"], ["Anker", "Belkin", "INIU", "Baseus"],
       attr=(("5000mAh", "10000mAh", "20000mAh", "26800mAh"), "{v}", ("{v}", "{v} mah")),
       feature=("with Built-in Cable", "built in cable", ""), complements=("usb_c_cable",),
       lookalikes=("aa_batteries",), bullets=("Charges an iPhone up to 4 times", "Dual USB output ports")),
    _t("led_bulbs", ["LED Light Bulbs", "A19 LED Bulb", "Soft White LED Bulbs"],
       ["led light bulbs", "led bulbs", "light bulbs"], ["Philips", "GE", "Sylvania", "Amazon Basics"],
       attr=(("40W Equivalent", "60W Equivalent", "75W Equivalent", "100W Equivalent"), "{v}",
             ("{v}", "{v} equivalent")), packs=(4, 6, 12, 24), pack_fmt="{v} Pack",
       feature=("Dimmable", "dimmable", "Non-Dimmable"), colors=False, lookalikes=("ceiling_fan",),
       bullets=("Lasts up to 13.7 years", "Uses 85% less energy")),
)
TYPE_INDEX = {t.key: i for i, t in enumerate(TYPES)}
ADJ = ("Premium", "Lightweight", "Durable", "Classic", "Ultra", "Pro", "Essential", "Everyday",
       "Compact", "Heavy Duty", "Slim", "Deluxe")
GENERIC_BULLETS = ("Backed by a 1-year manufacturer warranty", "Ideal gift for men, women and teens",
                   "Ships in frustration-free packaging", "Satisfaction guaranteed or your money back")
DESCRIPTIONS = ("<p>Designed for everyday use, the {brand} {name} combines quality and value.</p>",
                "<b>Why choose {brand}?</b><br>We have built {name_low} for over 20 years.<br><br>",
                "Package includes:<br>1 x {name}<br>User manual &amp; warranty card",
                "<p>Specifications:</p><ul><li>{spec}</li><li>Brand: {brand}</li></ul>")
QUERY_MODS = ("best", "cheap", "for men", "for women", "for kids", "", "", "", "", "", "", "")


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


def make_sample_catalog(raw_dir: Path, size: str = "small", seed: int = 0, chunk: int = 100_000,
                        n_products: int | None = None, n_queries: int | None = None) -> dict:
    """Write the two ESCI parquet files for the chosen size into raw_dir; return the summary."""
    spec = dict(SIZES[size])
    if n_products:
        spec["n_products"] = n_products
    if n_queries:
        spec["n_queries"] = n_queries
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    with Timer() as tm:
        cat = Catalog(spec["n_products"], seed)
        rng = np.random.default_rng(seed + 1)
        show = spec["n_products"] >= 200_000
        with parquet_writer(raw_dir / PRODUCTS_FILE, PRODUCTS_SCHEMA) as w:
            for s in tqdm(range(0, cat.n, chunk), desc="products", unit="chunk", disable=not show):
                cols = cat.render_chunk(s, min(cat.n, s + chunk), rng)
                w.write_table(pa.Table.from_pydict(cols, schema=PRODUCTS_SCHEMA))
        qrng = np.random.default_rng(seed + 2)
        # queries from random seed products, drawn until n_queries distinct texts exist (the same
        # text is one query with one id and one split, as in ESCI); ~70/30 train/test by query
        label_counts = {k: 0 for k in "ESCI"}
        example_id, seen_q = 0, {}
        bar = tqdm(total=spec["n_queries"], desc="queries", unit="q", disable=not show)
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
    p.add_argument("--n-products", type=int, default=None, help="override the size's product count")
    p.add_argument("--n-queries", type=int, default=None, help="override the size's query count")
    add_common_args(p, data_dir=False)
    p.set_defaults(seed=0)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    return make_sample_catalog(args.raw_dir, args.size, args.seed,
                               n_products=args.n_products, n_queries=args.n_queries)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
