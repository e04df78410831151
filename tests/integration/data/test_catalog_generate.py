"""The generated catalog, written to real storage and read back through the downloader."""
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from services.catalog.baseline import colour_histogram_embeddings
from services.catalog.generate import generate_catalog
from services.common.storage import LocalStorage, ObjectRef, S3Storage
from services.trainer.config import RunConfig
from services.trainer.data.download import DownloadConfig, download_images
from services.trainer.data.manifest import build_manifest

N_PRODUCTS, FRAMES, SIZE = 36, 8, 64  # 9 brands in 3 categories, one palette each


def rows(products):
    """What the lead's DB would hand the manifest: ids assigned, images flattened."""
    product_rows, image_rows = [], []
    for pid, p in enumerate(products, start=1):
        product_rows.append({"id": pid, **{k: v for k, v in p.items() if k != "images"}})
        image_rows.extend({"product_id": pid, **img} for img in p["images"])
    return product_rows, image_rows


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    products = generate_catalog(LocalStorage(root), N_PRODUCTS, images_per_product=10, seed=3,
                                image_size=SIZE, frame_count=FRAMES)
    return root, products


def test_products_and_images(catalog):
    _, products = catalog
    assert len(products) == N_PRODUCTS
    assert len({p["barcode"] for p in products}) == N_PRODUCTS
    for p in products:
        assert p["frame_count"] == FRAMES
        assert p["frames_path"] == f"storage://catalog/products/{p['barcode']}/frames"
        assert p["product_name"].startswith(p["brand_name"])
        by_domain = {}
        for img in p["images"]:
            by_domain.setdefault(img["domain"], []).append(img)
            assert img["frame_index"] is None and img["url"].startswith("storage://catalog/")
        assert {d: len(v) for d, v in by_domain.items()} == {"real": 4, "augmented": 4, "cutout": 2}
        photo_keys = {img["source_key"] for img in by_domain["real"]}
        assert len(photo_keys) == 4
        derived = by_domain["augmented"] + by_domain["cutout"]
        assert {img["source_key"] for img in derived} <= photo_keys


def test_every_image_downloads_and_decodes(catalog, tmp_path):
    root, products = catalog
    run = RunConfig.model_validate({"image_config": {"frame_selection": "all"}})
    records = build_manifest(*rows(products), run)
    assert len(records) == N_PRODUCTS * (FRAMES + 10)
    cfg = DownloadConfig(cache_dir=tmp_path)
    result = download_images(records, cfg, storage=LocalStorage(root))
    assert result.report.ok == len(records), result.report.to_dict()
    for item in result.images[:: len(result.images) // 20]:
        img = Image.open(item.path)
        assert img.size == (SIZE, SIZE)
        assert img.convert("RGB").getextrema() != ((0, 0), (0, 0), (0, 0))


def test_same_seed_same_bytes(catalog, tmp_path):
    root, products = catalog
    again = generate_catalog(LocalStorage(tmp_path), N_PRODUCTS, images_per_product=10, seed=3,
                             image_size=SIZE, frame_count=FRAMES)
    assert again == products

    def digests(base):
        return {p.relative_to(base): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(base.rglob("*")) if p.is_file()}

    assert digests(tmp_path) == digests(root)


def test_colour_identifies_the_category_not_the_product(catalog):
    """Nearest neighbour by colour histogram: photos and cutouts against turntable frames.

    The brands of a category share its palette, so colour finds the category well above
    chance (1 in 3), but within the category it is hardly better than a guess among its 12
    products."""
    root, products = catalog
    storage = LocalStorage(root)

    def load(url):
        return Image.open(io.BytesIO(storage.get(ObjectRef.parse(url))))

    gallery, gallery_product, queries, query_product = [], [], [], []
    for i, p in enumerate(products):
        for f in range(FRAMES):
            gallery.append(load(f"{p['frames_path']}/frame_{f:04d}.png"))
            gallery_product.append(i)
        for img in p["images"]:
            queries.append(load(img["url"]))
            query_product.append(i)
    g, q = colour_histogram_embeddings(gallery), colour_histogram_embeddings(queries)
    nearest = np.asarray(gallery_product)[(q @ g.T).argmax(1)]
    truth = np.asarray(query_product)
    categories = np.asarray([p["category"] for p in products])
    assert len(set(categories)) == 3
    assert len({p["brand_name"] for p in products}) == 9
    product_r1 = float((nearest == truth).mean())
    category_r1 = float((categories[nearest] == categories[truth]).mean())
    assert category_r1 > 1 / 3 + 0.2
    assert product_r1 < category_r1 / 4


def test_generator_writes_to_s3(s3_client):
    storage = S3Storage(s3_client)
    products = generate_catalog(storage, 2, images_per_product=3, domains=["synthetic", "real"],
                                seed=1, image_size=48, frame_count=2, bucket="catalog-s3")
    urls = [f"{p['frames_path']}/frame_{i:04d}.png" for p in products for i in range(2)]
    urls += [img["url"] for p in products for img in p["images"]]
    assert len(urls) == 10
    for url in urls:
        Image.open(io.BytesIO(storage.get(ObjectRef.parse(url)))).load()
