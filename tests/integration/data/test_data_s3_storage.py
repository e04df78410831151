"""S3Storage and storage:// downloads against a real S3-protocol server (moto) on loopback."""
import io
import uuid

import pytest
from PIL import Image

from services.common.errors import StorageError
from services.common.storage import ObjectRef, S3Storage
from services.trainer.data.download import DownloadConfig, download_images
from services.trainer.data.manifest import ImageRecord


def png_bytes(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def storage(s3_client):
    return S3Storage(s3_client)


@pytest.fixture
def bucket():
    return f"b-{uuid.uuid4().hex[:12]}"


def test_put_get_exists_size_list_delete(storage, bucket):
    a, b, c = (ObjectRef(bucket, k) for k in ("p/1/a.png", "p/1/b.png", "p/2/c.png"))
    assert not storage.exists(a)
    assert list(storage.list(bucket, "p/")) == []  # the bucket does not exist yet
    storage.put(a, b"alpha")
    storage.put(b, b"")
    storage.put(c, b"gamma" * 1000)
    assert storage.get(a) == b"alpha" and storage.get(b) == b""
    assert storage.exists(a) and storage.size(c) == 5000 and storage.size(b) == 0
    assert sorted(r.key for r in storage.list(bucket, "p/1/")) == ["p/1/a.png", "p/1/b.png"]
    assert len(list(storage.list(bucket, ""))) == 3
    storage.put(a, b"alpha2")  # overwrite
    assert storage.get(a) == b"alpha2"
    storage.delete(a)
    storage.delete(a)  # deleting twice is fine
    assert not storage.exists(a)
    with pytest.raises(StorageError):
        storage.get(a)
    with pytest.raises(StorageError):
        storage.size(a)
    assert ObjectRef.parse(c.url) == c and c.url == f"storage://{bucket}/p/2/c.png"


def test_downloader_fetches_storage_urls(storage, bucket, tmp_path):
    refs = [ObjectRef(bucket, f"img/{i}.png") for i in range(3)]
    for i, ref in enumerate(refs):
        storage.put(ref, png_bytes((i, 50, 100)))
    storage.put(ObjectRef(bucket, "img/garbage.png"), b"definitely not a png")
    storage.put(ObjectRef(bucket, "img/big.png"), png_bytes((1, 1, 1)) + b"\0" * 20_000)
    urls = [r.url for r in refs] + [
        f"storage://{bucket}/img/garbage.png",
        f"storage://{bucket}/img/missing.png",
        f"storage://{bucket}/img/big.png",
        f"storage://no-such-bucket-{bucket}/x.png",
    ]
    records = [ImageRecord(1, u, "synthetic", 0, "c", "b", "1") for u in urls]
    cfg = DownloadConfig(cache_dir=tmp_path / "cache", max_bytes=10_000, max_retries=0)

    result = download_images(records, cfg, storage=storage)
    assert [i.record.url for i in result.images] == [r.url for r in refs]
    assert Image.open(result.images[2].path).getpixel((0, 0)) == (2, 50, 100)
    assert {k: v for k, v in result.report.skipped.items() if v} == {
        "not_an_image": 1, "not_found": 2, "too_large": 1,
    }

    again = download_images(records[:3], cfg, storage=None)  # all cached: storage not needed
    assert again.report.cached == 3


def test_storage_url_without_storage_is_a_client_error(tmp_path):
    records = [ImageRecord(1, "storage://catalog/x.png", "real", None, "c", "b", "1")]
    result = download_images(records, DownloadConfig(cache_dir=tmp_path))
    assert result.report.skipped["client_error"] == 1
