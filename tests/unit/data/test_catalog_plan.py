"""The catalog plan and the colour baseline (pure parts of services/catalog)."""
import math
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from services.catalog.baseline import colour_histogram_embeddings
from services.catalog.generate import domain_counts, plan_catalog
from services.catalog.render import SHAPES, build_textures, render_package


@pytest.mark.parametrize(
    ("n", "domains", "expected"),
    [
        (20, ["synthetic", "real", "augmented", "cutout"],
         {"real": 8, "augmented": 8, "cutout": 4}),
        (7, ["real"], {"real": 7}),
        (10, ["real", "cutout"], {"real": 7, "cutout": 3}),
        (5, ["synthetic"], {}),
        (3, ["real", "augmented", "cutout"], {"real": 1, "augmented": 1, "cutout": 1}),
    ],
)
def test_domain_counts(n, domains, expected):
    assert domain_counts(n, domains) == expected


def ean13_ok(code: str) -> bool:
    digits = [int(c) for c in code]
    checksum = sum(digits[0:12:2]) + 3 * sum(digits[1:12:2]) + digits[12]
    return len(code) == 13 and checksum % 10 == 0


def test_plan_is_deterministic_and_products_distinct():
    designs = plan_catalog(40, seed=5)
    assert designs == plan_catalog(40, seed=5)
    assert designs != plan_catalog(40, seed=6)
    assert len({d.barcode for d in designs}) == 40 and all(ean13_ok(d.barcode) for d in designs)
    assert len({d.brand + d.name for d in designs}) == 40
    by_brand = defaultdict(list)
    for d in designs:
        by_brand[d.brand].append(d)
    assert len(by_brand) == 10
    for products in by_brand.values():
        assert len({d.palette for d in products}) == 1  # a brand has one palette
        assert len({d.category for d in products}) == 1  # ... and sells in one category
    shapes_of_multi_shape_brands = [
        {d.shape for d in ps} for ps in by_brand.values() if ps[0].category != "canned_food"
    ]
    assert all(len(s) >= 2 for s in shapes_of_multi_shape_brands)


@pytest.mark.parametrize("n_products", [40, 80, 200])
def test_colour_is_shared_by_a_category_not_owned_by_a_product(n_products):
    """Each category has one palette, used by several brands: ~12 products share a palette
    and differ by shape and layout, which no two products of a palette have in common."""
    designs = plan_catalog(n_products, seed=7)
    by_palette = defaultdict(list)
    for d in designs:
        by_palette[d.palette].append(d)
    n_categories = len({d.category for d in designs})
    assert len(by_palette) == n_categories == min(7, math.ceil(n_products / 12))
    for products in by_palette.values():
        assert len({d.category for d in products}) == 1
        assert len({d.brand for d in products}) >= 2
        assert len(products) >= 8
        layouts = {(d.band, d.backdrop, d.emblem, d.emblem_side) for d in products}
        assert len(layouts) == len(products)


@pytest.mark.parametrize("shape", SHAPES)
def test_render_package_rotates(shape):
    design = next(d for d in plan_catalog(40, seed=1) if d.shape == shape)
    tex = build_textures(design, 96)
    front = render_package(design, tex, 0, 60)
    side = render_package(design, tex, 90, 60)
    assert front.mode == "RGBA" and front.height == 60
    front_width = (np.asarray(front)[..., 3] > 0).any(0).sum()
    side_width = (np.asarray(side)[..., 3] > 0).any(0).sum()
    if shape in ("box", "pouch"):
        assert side_width < front_width  # the narrow side faces the camera
    else:
        assert side_width == front_width  # a cylinder looks as wide from every side
        assert not np.array_equal(np.asarray(front), np.asarray(side))  # but the label moved


def test_colour_histograms_are_l2_normalised():
    images = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("L", (4, 4), 128),
              np.zeros((5, 5, 3), np.uint8)]
    emb = colour_histogram_embeddings(images)
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    assert emb[0].argmax() == 7 * 64  # red -> bin (7, 0, 0)
    assert emb[1].argmax() == (4 * 8 + 4) * 8 + 4
    assert colour_histogram_embeddings([], bins=4).shape == (0, 64)
    with pytest.raises(ValueError):
        colour_histogram_embeddings(images, bins=7)
