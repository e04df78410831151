import hashlib

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError

from services.trainer.data.dataset import ProductImageDataset
from services.trainer.data.decoded import (
    RESIZE_MODE,
    DecodedImageCache,
    decode_resized,
    decoded_side,
    source_digest,
)
from services.trainer.data.download import DownloadConfig, LocalImage, download_images
from services.trainer.data.manifest import ImageRecord


def _photo(path, size=(1000, 600), fmt="JPEG", **save):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path, fmt, **save)
    return path


def test_decoded_side_covers_the_eval_crop_and_the_smallest_train_crop():
    assert decoded_side(224) == 256 and decoded_side(64) == 74 and decoded_side(7) == 8
    assert decoded_side(224, 0.5) == 317 and decoded_side(56, 0.5) == 80  # 317 * sqrt(.5) >= 224


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_resized_keeps_the_aspect_with_the_shorter_side_at_side(tmp_path, fmt):
    x = decode_resized(_photo(tmp_path / "a", fmt=fmt), 256)
    assert x.dtype == np.uint8 and x.shape == (256, 427, 3)
    small = decode_resized(_photo(tmp_path / "b", size=(40, 100), fmt=fmt), 64)
    assert small.shape == (160, 64, 3)  # upscaled, as the eval resize does


def test_decode_resized_applies_the_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    path = _photo(tmp_path / "r.jpg", size=(300, 200), exif=exif.tobytes())
    assert decode_resized(path, 100).shape == (150, 100, 3)


def test_cache_decodes_once_per_content_and_side(tmp_path):
    photo = _photo(tmp_path / "photo.jpg")
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    cache = DecodedImageCache(tmp_path / "decoded")
    first = cache.load(photo, 256)  # a name that is not a hash: the bytes are hashed
    stored = cache.path_for(digest, 256)
    assert stored == tmp_path / "decoded" / f"256px-{RESIZE_MODE}" / digest[:2] / f"{digest}.npy"
    assert np.array_equal(np.load(stored), first)

    cached_source = photo.rename(tmp_path / f"{digest}.jpg")  # named as the download cache does
    assert source_digest(cached_source) == digest
    cached_source.write_bytes(b"")  # the bytes are never read again at a cached size
    assert np.array_equal(cache.load(cached_source, 256), first)
    with pytest.raises(UnidentifiedImageError):
        cache.load(cached_source, 128)  # another size is another entry: decoding is needed
    assert not list((tmp_path / "decoded").rglob(".tmp-*"))


def test_download_cache_names_are_the_content_hash(tmp_path):
    source = _photo(tmp_path / "x.png", fmt="PNG")
    result = download_images([ImageRecord(1, source.as_uri(), "real", None, "c", "b", "1")],
                             DownloadConfig(cache_dir=tmp_path / "cache"))
    [image] = result.images
    assert image.decoded_dir == tmp_path / "cache" / "decoded"
    assert source_digest(image.path) == hashlib.sha256(source.read_bytes()).hexdigest()
    assert source_digest(image.path) == image.path.stem


@pytest.mark.parametrize("train", [False, True])
def test_cached_and_uncached_items_are_the_same(tmp_path, train):
    record = ImageRecord(1, "https://x/1.jpg", "real", None, "c", "b", "1")
    source = _photo(tmp_path / "p.jpg", size=(320, 240))
    plain = ProductImageDataset([LocalImage(record, source)], 64, train=train)
    cached = ProductImageDataset([LocalImage(record, source, tmp_path / "d")], 64, train=train)
    for _ in range(2):  # decode + store, then load
        torch.manual_seed(3)
        a = plain[0][0]
        torch.manual_seed(3)
        b = cached[0][0]
        assert a.shape == (3, 64, 64) and torch.equal(a, b)
    assert len(list((tmp_path / "d").rglob("*.npy"))) == 1
