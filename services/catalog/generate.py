"""Generate a product catalog into a Storage: designs, turntable frames and photos.

`generate_catalog` returns one dict per product, the rows the lead writes to the database::

    {"barcode": "2048...", "product_name": "Velmo Lemon Cola", "brand_name": "Velmo",
     "category": "beverages", "frames_path": "storage://catalog/products/<barcode>/frames",
     "frame_count": 24,
     "images": [{"url": "storage://catalog/products/<barcode>/real/000.jpg", "domain": "real",
                 "frame_index": None, "source_key": "<barcode>/photo_000"}, ...]}

Decisions:
- Synthetic frames are not listed in `images`: they live at
  ``{frames_path}/frame_{i:04d}.png`` for ``i < frame_count``, which is where the manifest
  looks for them (`frames_path` is None and `frame_count` 0 without the synthetic domain).
- `images_per_product` counts the other domains, shared by weight (real 2, augmented 2,
  cutout 1) with largest remainder. Each real photo is a "source": its augmented copies and
  its cutout carry the photo's `source_key`, so retrieval can exclude an item's own copies.
  Without the real domain the sources are still drawn, just not stored.
- Colour identifies a category, never a product. Each category has a colour code (its
  palette), the way a shelf of milk or of tea follows one: the about 3 brands competing in a
  category (`BRANDS_PER_CATEGORY`; own-label lookalikes copy the leader's colours) all use it,
  and every brand has about 4 products (`PRODUCTS_PER_BRAND`). So some 12 products share each
  palette and differ only by shape, layout (band position, backdrop, emblem, emblem side),
  proportions and text; within a category no two products have the same layout. A catalog of
  n products uses about n / 12 categories (at most all 7, drawn by the seed), so any split of
  it holds several products of each palette: a colour histogram finds the category, not the
  product.
- Everything is drawn from generators seeded by (seed, product, image), so a seed always gives
  the same catalog, byte for byte.
- Real photos and augmented copies are JPEG (as phone photos are), frames and cutouts PNG.
"""
from __future__ import annotations

import io
import itertools
import math
from typing import Iterable

import numpy as np
from PIL import Image

from services.catalog.render import (
    BACKDROPS,
    BANDS,
    EMBLEMS,
    PackageDesign,
    Palette,
    augment_photo,
    build_textures,
    cutout,
    hsv,
    random_pose,
    shelf_photo,
    turntable_frame,
)
from services.common.storage import ObjectRef, Storage

CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "beverages": (("bottle", "can"), ("Cola", "Lemonade", "Iced Tea", "Soda", "Energy")),
    "snacks": (("pouch", "box"), ("Crisps", "Pretzels", "Nuts", "Crackers", "Popcorn")),
    "breakfast": (("box", "pouch"), ("Flakes", "Granola", "Muesli", "Oats", "Puffs")),
    "dairy": (("bottle", "box"), ("Milk", "Yogurt Drink", "Kefir", "Cream", "Oat Milk")),
    "canned_food": (("can",), ("Beans", "Tomatoes", "Corn", "Soup", "Tuna")),
    "household": (("bottle", "box"), ("Dish Soap", "Detergent", "Cleaner", "Softener", "Tabs")),
    "coffee_tea": (
        ("pouch", "can", "box"),
        ("Espresso", "Green Tea", "Black Tea", "Decaf", "Cocoa"),
    ),
}
VARIANTS = (
    "Classic", "Zero", "Lemon", "Berry", "Gold", "Mint", "Vanilla", "Honey", "Sea Salt",
    "Spicy", "Light", "Extra", "Dark", "Wild", "Fresh", "Original",
)
SIZES = {"bottle": ("500ml", "1L", "750ml"), "can": ("330ml", "400g", "250ml"),
         "box": ("500g", "375g", "1kg"), "pouch": ("150g", "200g", "90g")}
PROPORTIONS = {  # (height, width, depth) ranges as fractions of the image
    "box": ((0.6, 0.78), (0.36, 0.5), (0.12, 0.2)),
    "bottle": ((0.7, 0.82), (0.22, 0.3), (0.0, 0.0)),
    "can": ((0.46, 0.62), (0.3, 0.38), (0.0, 0.0)),
    "pouch": ((0.58, 0.74), (0.42, 0.52), (0.03, 0.05)),
}
SYLLABLES = ("nor", "vel", "bri", "ka", "lu", "zen", "mo", "tri", "ari", "do", "sol", "fen",
             "gra", "pi", "ro", "tes", "qua", "mi", "ven", "ox")
ENDINGS = ("ka", "via", "mo", "ra", "lo", "x", "na", "to", "is", "en")
DOMAIN_WEIGHTS = {"real": 2, "augmented": 2, "cutout": 1}
PRODUCTS_PER_BRAND = 4
BRANDS_PER_CATEGORY = 3


def domain_counts(n_images: int, domains: Iterable[str]) -> dict[str, int]:
    """Split `n_images` over the requested non-synthetic domains by weight (largest remainder)."""
    chosen = [d for d in DOMAIN_WEIGHTS if d in set(domains)]
    if not chosen:
        return {}
    total = sum(DOMAIN_WEIGHTS[d] for d in chosen)
    quotas = {d: n_images * DOMAIN_WEIGHTS[d] / total for d in chosen}
    counts = {d: math.floor(q) for d, q in quotas.items()}
    for d in sorted(chosen, key=lambda d: counts[d] - quotas[d])[: n_images - sum(counts.values())]:
        counts[d] += 1
    return counts


def _barcode(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        digits = "2" + "".join(str(int(x)) for x in rng.integers(0, 10, 11))
        odd, even = sum(map(int, digits[0::2])), sum(map(int, digits[1::2]))
        code = digits + str((10 - (odd + 3 * even) % 10) % 10)
        if code not in taken:
            taken.add(code)
            return code


def _palette(hue: float, rng: np.random.Generator) -> Palette:
    return Palette(
        primary=hsv(hue, rng.uniform(0.55, 0.9), rng.uniform(0.45, 0.9)),
        secondary=hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.7), rng.uniform(0.8, 1.0)),
        accent=hsv(hue + rng.uniform(0.1, 0.2), rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0)),
    )


def _brands(n_brands: int, rng: np.random.Generator) -> list[tuple[str, Palette, str]]:
    """(name, palette, category) per brand: brands take the categories in turn, and every
    brand of a category uses the category's palette."""
    names: list[str] = []
    while len(names) < n_brands:
        name = (str(rng.choice(SYLLABLES)) + str(rng.choice(ENDINGS))).capitalize()
        if name not in names:
            names.append(name)
    n_categories = min(len(CATEGORIES), math.ceil(n_brands / BRANDS_PER_CATEGORY))
    categories = [list(CATEGORIES)[j] for j in rng.permutation(len(CATEGORIES))[:n_categories]]
    hue0 = rng.random()
    palettes = [_palette(hue0 + c * 0.618034, rng) for c in range(n_categories)]
    return [(name, palettes[i % n_categories], categories[i % n_categories])
            for i, name in enumerate(names)]


def plan_catalog(n_products: int, seed: int) -> list[PackageDesign]:
    """The designs alone, no drawing.

    Within a brand the shapes of the category take turns, and every product of a category
    (all brands: they share its palette) gets a different (band, backdrop, emblem, emblem side)
    layout.
    """
    rng = np.random.default_rng([seed, 0])
    n_brands = max(2, math.ceil(n_products / PRODUCTS_PER_BRAND))
    brands = _brands(n_brands, rng)
    taken: set[str] = set()
    designs: list[PackageDesign] = []
    looks: dict[str, list] = {}
    used: dict[str, int] = {}
    for i in range(n_products):
        brand, palette, category = brands[i % n_brands]
        shapes, nouns = CATEGORIES[category]
        if category not in looks:
            combos = list(itertools.product(BANDS, BACKDROPS, EMBLEMS, ("left", "center", "right")))
            looks[category] = [combos[j] for j in rng.permutation(len(combos))]
        k = i // n_brands
        shape = shapes[(k + i) % len(shapes)]
        n_used = used.get(category, 0)
        used[category] = n_used + 1
        band, backdrop, emblem, side = looks[category][n_used % len(looks[category])]
        heights, widths, depths = PROPORTIONS[shape]
        variant = VARIANTS[(k * 5 + i) % len(VARIANTS)]
        designs.append(
            PackageDesign(
                shape=shape,
                category=category,
                brand=brand,
                name=f"{variant} {nouns[k % len(nouns)]}",
                size_text=str(rng.choice(SIZES[shape])),
                barcode=_barcode(rng, taken),
                palette=palette,
                band=band,
                backdrop=backdrop,
                emblem=emblem,
                emblem_side=side,
                height=float(rng.uniform(*heights)),
                width=float(rng.uniform(*widths)),
                depth=float(rng.uniform(*depths)),
            )
        )
    return designs


def _encode(img: Image.Image, fmt: str, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _render_product(
    design: PackageDesign,
    index: int,
    seed: int,
    counts: dict[str, int],
    image_size: int,
    frame_count: int,
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str, str]]]:
    """(key, bytes) of every file of one product, and (key, domain, source_key) of its images."""
    tex = build_textures(design, image_size)
    files = []
    for i in range(frame_count):
        frame = turntable_frame(design, tex, i, frame_count, image_size)
        files.append((f"frames/frame_{i:04d}.png", _encode(frame, "PNG")))
    n_sources = counts.get("real") or max(1, math.ceil(sum(counts.values()) / 3))
    sources = []
    for s in range(n_sources):
        rng = np.random.default_rng([seed, index + 1, 1, s])
        pose = random_pose(rng)
        photo = shelf_photo(design, tex, pose, rng, image_size)
        sources.append((f"{design.barcode}/photo_{s:03d}", pose, photo))

    images = []
    for j in range(counts.get("real", 0)):
        source_key, _, photo = sources[j]
        files.append((f"real/{j:03d}.jpg", _encode(photo, "JPEG")))
        images.append((files[-1][0], "real", source_key))
    for j in range(counts.get("augmented", 0)):
        source_key, _, photo = sources[j % n_sources]
        rng = np.random.default_rng([seed, index + 1, 2, j])
        quality = int(rng.integers(55, 90))
        copy = augment_photo(photo, rng)
        files.append((f"augmented/{j:03d}.jpg", _encode(copy, "JPEG", quality)))
        images.append((files[-1][0], "augmented", source_key))
    for j in range(counts.get("cutout", 0)):
        source_key, pose, _ = sources[j % n_sources]
        rng = np.random.default_rng([seed, index + 1, 3, j])
        cut = cutout(design, tex, pose, rng, image_size)
        files.append((f"cutout/{j:03d}.png", _encode(cut, "PNG")))
        images.append((files[-1][0], "cutout", source_key))
    return files, images


def generate_catalog(
    storage: Storage,
    n_products: int,
    images_per_product: int = 20,
    domains: Iterable[str] = ("synthetic", "real", "augmented", "cutout"),
    seed: int = 0,
    image_size: int = 128,
    frame_count: int = 24,
    bucket: str = "catalog",
) -> list[dict]:
    """Draw the catalog, write every image to `storage`, return the product dicts.

    About 2.5 ms per image at 128 px on one core: 60 products x (24 frames + 20 photos) take
    about 7 s, 30 products at 96 px about 3 s. (Drawing in a pool did not pay on 2 shared
    cores, so it stays in one thread.)
    """
    domains = set(domains)
    counts = domain_counts(images_per_product, domains)
    frames = frame_count if "synthetic" in domains else 0
    designs = plan_catalog(n_products, seed)
    products = []
    for index, design in enumerate(designs):
        files, images = _render_product(design, index, seed, counts, image_size, frames)
        prefix = f"products/{design.barcode}"
        for key, data in files:
            storage.put(ObjectRef(bucket, f"{prefix}/{key}"), data)
        products.append(
            {
                "barcode": design.barcode,
                "product_name": f"{design.brand} {design.name}",
                "brand_name": design.brand,
                "category": design.category,
                "frames_path": ObjectRef(bucket, f"{prefix}/frames").url if frames else None,
                "frame_count": frames,
                "images": [
                    {
                        "url": ObjectRef(bucket, f"{prefix}/{key}").url,
                        "domain": domain,
                        "frame_index": None,
                        "source_key": source_key,
                    }
                    for key, domain, source_key in images
                ],
            }
        )
    return products
