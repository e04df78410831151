import random
from collections import Counter
from dataclasses import dataclass

import pytest

from services.trainer.config import RunConfig
from services.trainer.data.manifest import build_manifest, count_manifest


def config(**image_config) -> RunConfig:
    return RunConfig.model_validate({"image_config": image_config})


def catalog():
    """Two products with every domain; augmented copies come from 3 source photos."""
    products = [
        {"id": 1, "barcode": "b1", "product_name": "A", "brand_name": "Acme", "category": "snacks",
         "frames_path": "storage://catalog/products/b1/frames", "frame_count": 24},
        {"id": 2, "barcode": "b2", "product_name": "B", "brand_name": "Acme", "category": "dairy",
         "frames_path": "storage://catalog/products/b2/frames/", "frame_count": 8},
    ]
    images = []
    for pid in (1, 2):
        for j in range(3):
            images.append({"product_id": pid, "url": f"https://img/{pid}/real{j}.jpg",
                           "domain": "real", "frame_index": None, "source_key": f"{pid}/s{j}"})
        for j in range(15):
            images.append({"product_id": pid, "url": f"https://img/{pid}/aug{j:02d}.jpg",
                           "domain": "augmented", "frame_index": None,
                           "source_key": f"{pid}/s{j % 3}"})
        for j in range(2):
            images.append({"product_id": pid, "url": f"https://img/{pid}/cut{j}.png",
                           "domain": "cutout", "frame_index": None, "source_key": f"{pid}/s{j}"})
        images.append({"product_id": pid, "url": f"https://img/{pid}/listed-frame.png",
                       "domain": "synthetic", "frame_index": 0, "source_key": None})
    return products, images


def test_every_requested_domain_is_included():
    products, images = catalog()
    records = build_manifest(products, images, config(max_frames_per_type=10))
    per = Counter((r.product_id, r.domain) for r in records)
    assert per == {
        (1, "synthetic"): 4, (1, "real"): 3, (1, "augmented"): 10, (1, "cutout"): 2,
        (2, "synthetic"): 4, (2, "real"): 3, (2, "augmented"): 10, (2, "cutout"): 2,
    }


def test_synthetic_urls_follow_the_frame_selection():
    products, images = catalog()
    records = build_manifest(products, images, config(frame_selection="key_frames"))
    synth = [(r.product_id, r.frame_index, r.url) for r in records if r.domain == "synthetic"]
    assert synth[:4] == [
        (1, i, f"storage://catalog/products/b1/frames/frame_{i:04d}.png") for i in (0, 6, 12, 18)
    ]
    assert [s[2] for s in synth[4:]] == [
        f"storage://catalog/products/b2/frames/frame_{i:04d}.png" for i in (0, 2, 4, 6)
    ]
    assert not any("listed-frame" in r.url for r in records)


@pytest.mark.parametrize("types", [["real"], ["augmented"], ["cutout"], ["synthetic", "cutout"]])
def test_only_requested_domains(types):
    products, images = catalog()
    records = build_manifest(products, images, config(image_types=types))
    assert {r.domain for r in records} == set(types)


def test_cap_per_product_per_domain_spreads_over_sources():
    products, images = catalog()
    records = build_manifest(products, images, config(image_types=["augmented"],
                                                      max_frames_per_type=3))
    for pid in (1, 2):
        chosen = [r for r in records if r.product_id == pid]
        assert len(chosen) == 3
        assert {r.source_key for r in chosen} == {f"{pid}/s0", f"{pid}/s1", f"{pid}/s2"}


@pytest.mark.parametrize(
    ("field", "expected"), [("product_id", {"1", "2"}), ("category", {"snacks", "dairy"}),
                            ("brand_name", {"Acme"})]
)
def test_label_field(field, expected):
    products, images = catalog()
    cfg = RunConfig.model_validate({"label_config": {"label_field": field}})
    records = build_manifest(products, images, cfg)
    assert {r.label for r in records} == expected
    assert all(isinstance(r.label, str) for r in records)
    assert {(r.product_id, r.category, r.brand) for r in records} == {
        (1, "snacks", "Acme"), (2, "dairy", "Acme")
    }


def test_product_without_label_value_is_left_out():
    products, images = catalog()
    products[1]["category"] = None
    cfg = RunConfig.model_validate({"label_config": {"label_field": "category"}})
    assert {r.product_id for r in build_manifest(products, images, cfg)} == {1}


def test_product_without_frames_has_no_synthetic_images():
    products, images = catalog()
    products[0]["frames_path"] = None
    products[1]["frame_count"] = 0
    records = build_manifest(products, images, config())
    assert not [r for r in records if r.domain == "synthetic"]
    assert {r.domain for r in records} == {"real", "augmented", "cutout"}


def test_output_does_not_depend_on_input_order_and_accepts_objects():
    @dataclass
    class Row:
        product_id: int
        url: str
        domain: str
        frame_index: int | None
        source_key: str | None

    products, images = catalog()
    expected = build_manifest(products, images, config())
    rows = [Row(**i) for i in images]
    random.Random(3).shuffle(rows)
    assert build_manifest(list(reversed(products)), rows, config()) == expected


def test_count_manifest_applies_the_min_samples_filter():
    products, images = catalog()
    cfg = RunConfig.model_validate({"image_config": {"image_types": ["real"]},
                                    "label_config": {"min_samples_per_class": 3}})
    assert count_manifest(products, images, cfg) == (2, 6)
    images = [i for i in images if i["url"] != "https://img/2/real0.jpg"]
    assert count_manifest(products, images, cfg) == (1, 3)
