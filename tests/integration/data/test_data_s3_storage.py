"""S3Storage and storage:// downloads against a real S3-protocol server (moto) on loopback:
multipart uploads, the per-object limit, one physical bucket, retries of 5xx answers."""
import io
import uuid

import pytest
import torch
from PIL import Image

from services.common.errors import ObjectTooLarge, StorageError
from services.common.settings import Settings
from services.common.storage import (
    LocalStorage,
    ObjectRef,
    S3Options,
    S3Storage,
    s3_client,
    storage_from_settings,
)
from services.trainer.checkpoints import attempt_prefix, read_manifest, save_checkpoint
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


MiB = 1024 * 1024


def _client(endpoint, *, max_attempts=5, addressing_style="path"):
    return s3_client(endpoint_url=endpoint, region="us-east-1", access_key_id="test",
                     secret_access_key="test", addressing_style=addressing_style,
                     max_attempts=max_attempts)


def test_large_object_goes_up_in_parts(s3_endpoint, bucket):
    storage = S3Storage(_client(s3_endpoint), S3Options(multipart_bytes=5 * MiB))
    data = bytes(range(256)) * (11 * MiB // 256 + 1)
    ref = ObjectRef(bucket, "runs/u/attempt-1/big.bin")
    storage.put(ref, data)
    etag = storage.client.head_object(Bucket=bucket, Key=ref.key)["ETag"]
    assert etag.strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert storage.get(ref) == data and storage.size(ref) == len(data)
    small = ObjectRef(bucket, "runs/u/attempt-1/small.bin")
    storage.put(small, b"x" * MiB)
    assert "-" not in storage.client.head_object(Bucket=bucket, Key=small.key)["ETag"]


def test_object_over_the_limit_is_refused_before_upload(s3_endpoint, bucket):
    storage = S3Storage(_client(s3_endpoint), S3Options(max_object_bytes=1000))
    ref = ObjectRef(bucket, "x.bin")
    storage.put(ref, b"a" * 1000)
    with pytest.raises(ObjectTooLarge, match="SKUTRAIN_STORAGE_MAX_OBJECT_BYTES") as err:
        storage.put(ObjectRef(bucket, "y.bin"), b"a" * 1001)
    assert err.value.code == "object_too_large"
    assert [r.key for r in storage.list(bucket, "")] == ["x.bin"]


def test_checkpoint_shards_stay_within_the_object_limit(s3_endpoint, bucket):
    limit = 1_000_000
    storage = S3Storage(_client(s3_endpoint), S3Options(max_object_bytes=limit))
    state = {f"layer{i}.weight": torch.randn(300, 600) for i in range(6)}  # 2.2 MB in fp16
    run_uuid = str(uuid.uuid4())
    manifest, manifest_ref = save_checkpoint(
        storage, state, prefix=attempt_prefix(run_uuid, 1), run_id=run_uuid, epoch=1, model_name="m", model_config={},
        preprocessing={}, label_map={}, metrics={}, max_object_bytes=limit, bucket=bucket)
    objects = list(storage.list(bucket, ""))
    assert len(objects) == len(manifest.shards) + 1 >= 4
    assert all(storage.size(o) <= limit for o in objects)
    assert read_manifest(storage, manifest_ref) == manifest


def test_one_physical_bucket_holds_every_logical_bucket(s3_endpoint, bucket):
    storage = S3Storage(_client(s3_endpoint), S3Options(bucket=bucket))
    refs = [ObjectRef("checkpoints", "runs/a/1.bin"), ObjectRef("catalog", "p/1.png")]
    for ref in refs:
        storage.put(ref, ref.key.encode())
    keys = sorted(o["Key"] for o in storage.client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["catalog/p/1.png", "checkpoints/runs/a/1.bin"]
    assert list(storage.list("checkpoints", "runs/")) == [refs[0]]
    assert storage.get(refs[1]) == b"p/1.png" and storage.exists(refs[0])
    storage.delete(refs[0])
    assert not storage.exists(refs[0])


def test_5xx_answers_are_retried(flaky_s3, bucket):
    storage = S3Storage(_client(flaky_s3.url, max_attempts=4), S3Options(max_attempts=4))
    ref = ObjectRef(bucket, "retried.bin")
    storage.put(ObjectRef(bucket, "first.bin"), b"1")  # creates the bucket
    flaky_s3.seen.clear()
    flaky_s3.failures = 2
    storage.put(ref, b"survives")
    assert flaky_s3.seen["PUT"] == 3 and flaky_s3.failures == 0
    assert storage.get(ref) == b"survives"


def test_endless_5xx_fails_with_a_storage_error(flaky_s3, bucket):
    storage = S3Storage(_client(flaky_s3.url, max_attempts=2), S3Options(max_attempts=2))
    storage.put(ObjectRef(bucket, "first.bin"), b"1")
    flaky_s3.seen.clear()
    flaky_s3.failures = 100
    with pytest.raises(StorageError, match="after 2 attempts") as err:
        storage.put(ObjectRef(bucket, "lost.bin"), b"x")
    assert flaky_s3.seen["PUT"] == 2 and err.value.code == "storage_error"
    flaky_s3.failures = 0
    assert not storage.exists(ObjectRef(bucket, "lost.bin"))


def test_storage_from_settings_reads_the_s3_settings(s3_endpoint, bucket):
    settings = Settings.model_validate({
        "SKUTRAIN_STORAGE": "s3", "S3_ENDPOINT_URL": s3_endpoint, "S3_ACCESS_KEY_ID": "k",
        "S3_SECRET_ACCESS_KEY": "s", "S3_REGION": "eu-west-1", "S3_BUCKET": bucket,
        "S3_ADDRESSING_STYLE": "path", "S3_MAX_ATTEMPTS": "3", "S3_MULTIPART_BYTES": str(6 * MiB),
        "SKUTRAIN_STORAGE_MAX_OBJECT_BYTES": "42000000",
    })
    storage = storage_from_settings(settings)
    assert storage.options == S3Options(bucket=bucket, max_object_bytes=42_000_000,
                                        multipart_bytes=6 * MiB, max_attempts=3)
    config = storage.client.meta.config
    assert config.s3["addressing_style"] == "path" and config.retries["total_max_attempts"] == 3
    assert storage.client.meta.region_name == "eu-west-1"
    ref = ObjectRef("checkpoints", "k.bin")
    storage.put(ref, b"v")
    assert storage.get(ref) == b"v"


def test_local_storage_enforces_the_same_limit(tmp_path):
    storage = LocalStorage(tmp_path, max_object_bytes=10)
    storage.put(ObjectRef("b", "ok"), b"0123456789")
    with pytest.raises(ObjectTooLarge):
        storage.put(ObjectRef("b", "big"), b"0123456789!")
    assert [r.key for r in storage.list("b", "")] == ["ok"]


def test_endless_5xx_on_delete_is_a_storage_error(flaky_s3, bucket):
    storage = S3Storage(_client(flaky_s3.url, max_attempts=2), S3Options(max_attempts=2))
    ref = ObjectRef(bucket, "kept.bin")
    storage.put(ref, b"1")
    flaky_s3.methods, flaky_s3.failures = {"DELETE"}, 100
    with pytest.raises(StorageError, match="could not delete"):
        storage.delete(ref)
    flaky_s3.failures = 0
    assert storage.get(ref) == b"1"
