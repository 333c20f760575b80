"""Vocabulary of the built-in sample catalog: colours, the 32 product types (names, aliases, brands,
attributes, packs, features, substitutes and complements), adjectives, bullets, descriptions and
query modifiers. Pure data, used by sample_catalog.py.
"""
from __future__ import annotations

from dataclasses import dataclass

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
