import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from services.trainer.data.dataset import (
    CROP_TRIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    N_DRAWS,
    ProductImageDataset,
    build_label_index,
    image_source,
    random_crop_box,
)
from services.trainer.data.download import LocalImage
from services.trainer.data.manifest import ImageRecord


@pytest.fixture
def images(tmp_path):
    items = []
    for i, (label, colour, size) in enumerate(
        [("b", (200, 10, 10), (80, 60)), ("a", (10, 200, 10), (50, 90)), ("b", (0, 0, 0), (64, 64))]
    ):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", size, colour).save(path, quality=100)
        record = ImageRecord(i, f"https://x/{i}.jpg", ("real", "synthetic", "cutout")[i], None,
                             "c", "br", label)
        items.append(LocalImage(record, path))
    return items


def test_label_index_is_sorted():
    assert build_label_index(["b", "a", "c", "a"]) == {"a": 0, "b": 1, "c": 2}


@pytest.mark.parametrize("train", [True, False])
def test_items_shape_label_domain(images, train):
    ds = ProductImageDataset(images, 32, train=train)
    assert len(ds) == 3
    assert ds.label_to_index == {"a": 0, "b": 1}
    assert ds.labels == [1, 0, 1]
    for i, (x, label, domain) in enumerate(ds):
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert label == ds.labels[i]
        assert domain == ("real", "synthetic", "cutout")[i]


def test_eval_is_normalised_and_deterministic(images):
    ds = ProductImageDataset(images, 24, train=False)
    x, _, _ = ds[2]  # black image
    expected = torch.from_numpy(-IMAGENET_MEAN / IMAGENET_STD).view(3, 1, 1).expand(3, 24, 24)
    assert torch.allclose(x, expected, atol=0.02)
    assert torch.equal(ds[0][0], ds[0][0])


def test_train_is_random_but_seeded(images):
    ds = ProductImageDataset(images, 24, train=True)
    torch.manual_seed(0)
    a = ds[0][0]
    torch.manual_seed(0)
    assert torch.equal(a, ds[0][0])
    # jitter moves colours, but only modestly
    red = (np.array([200, 10, 10]) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert (a.mean((1, 2)).numpy() - red).max() < 1.2


def test_given_label_map_is_kept(images):
    ds = ProductImageDataset(images, 16, train=False, label_to_index={"a": 5, "b": 7})
    assert ds.labels == [7, 5, 7]


def test_dataloader_batches(images):
    loader = DataLoader(ProductImageDataset(images, 16, train=True), batch_size=3)
    x, labels, domains = next(iter(loader))
    assert x.shape == (3, 3, 16, 16)
    assert labels.tolist() == [1, 0, 1]
    assert list(domains) == ["real", "synthetic", "cutout"]


def test_random_crop_box_worked_by_hand():
    # first try: full area, aspect 3/4 (u=0 -> lower bounds) -> 87x115 does not fit 100x100;
    # second try: half the area (u=0), aspect 1 (u=0.5) -> 71x71 at the position drawn
    u = [1.0, 0.0, 0.0, 0.5] + [0.0] * (2 * CROP_TRIES - 4) + [0.5, 1.0]
    assert random_crop_box(100, 100, u) == (15, 29, 86, 100)
    # nothing fits a 1-pixel-high strip: the centred square
    assert random_crop_box(50, 1, [0.5] * N_DRAWS) == (24, 0, 25, 1)


def test_random_crop_box_bounds():
    rng = np.random.default_rng(1)
    for width, height in [(64, 64), (100, 30), (7, 200)]:
        for _ in range(100):
            left, top, right, bottom = random_crop_box(width, height, rng.random(N_DRAWS))
            assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_image_source_groups_captures():
    frames = "storage://catalog/products/123/frames"
    # every frame of one turntable video is one source
    assert image_source("synthetic", f"{frames}/frame_0000.png", None) == image_source(
        "synthetic", f"{frames}/frame_0009.png", None)
    assert image_source("synthetic", f"{frames}/frame_0000.png", None) != image_source(
        "synthetic", "storage://catalog/products/456/frames/frame_0000.png", None)
    # a photo, its augmented copies and its cutout share the photo's source_key
    photo = image_source("real", "storage://x/real/000.jpg", "123/photo_000")
    assert image_source("augmented", "storage://x/augmented/003.jpg", "123/photo_000") == photo
    assert image_source("cutout", "storage://x/cutout/000.png", "123/photo_000") == photo
    assert image_source("real", "storage://x/real/001.jpg", "123/photo_001") != photo
    # without a source_key an image is its own source
    assert image_source("real", "https://a/1.jpg", None) != image_source("real", "https://a/2.jpg", None)


def test_sources_categories_and_label_names(tmp_path):
    def item(i, label, domain, url, source_key, category):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(path)
        return LocalImage(ImageRecord(i, url, domain, None, category, "br", label, source_key), path)

    images = [
        item(0, "17", "synthetic", "storage://c/p/17/frames/frame_0000.png", None, "dairy"),
        item(1, "17", "synthetic", "storage://c/p/17/frames/frame_0003.png", None, "dairy"),
        item(2, "17", "real", "storage://c/p/17/real/000.jpg", "17/photo_000", "dairy"),
        item(3, "17", "augmented", "storage://c/p/17/augmented/000.jpg", "17/photo_000", "dairy"),
        item(4, "5", "real", "storage://c/p/5/real/000.jpg", "5/photo_000", None),
    ]
    ds = ProductImageDataset(images, 16, train=False)
    assert ds.categories == ["dairy"] * 4 + [None]
    assert ds.sources[0] == ds.sources[1] != ds.sources[2] == ds.sources[3] != ds.sources[4]
    assert ds.label_to_index == {"17": 0, "5": 1}
    assert [ds.label_names[i] for i in ds.labels] == ["17", "17", "17", "17", "5"]
    given = ProductImageDataset(images, 16, train=False, label_to_index={"17": 4, "5": 9})
    assert given.label_names == {4: "17", 9: "5"}
