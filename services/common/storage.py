"""Object storage: a local directory by default, any S3-compatible endpoint through boto3.

Objects are named by `storage://<bucket>/<key>` URLs, whatever the backend, so a URL written
by the catalog or the trainer stays valid when the deployment moves from a local directory to
S3 (Supabase Storage, MinIO, AWS).
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from services.common.errors import ObjectTooLarge, StorageError

SCHEME = "storage://"


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, url: str) -> "ObjectRef":
        if not url.startswith(SCHEME):
            raise StorageError(f"not a storage URL (expected {SCHEME}<bucket>/<key>): {url}")
        bucket, _, key = url[len(SCHEME):].partition("/")
        if not bucket or not key:
            raise StorageError(f"storage URL needs a bucket and a key: {url}")
        return cls(bucket, key)


class Storage(Protocol):
    def put(self, ref: ObjectRef, data: bytes) -> None: ...
    def get(self, ref: ObjectRef) -> bytes: ...
    def exists(self, ref: ObjectRef) -> bool: ...
    def size(self, ref: ObjectRef) -> int: ...
    def delete(self, ref: ObjectRef) -> None: ...
    def list(self, bucket: str, prefix: str) -> Iterator[ObjectRef]: ...


def check_object_size(ref: ObjectRef, size: int, limit: int | None) -> None:
    """Refuse an object over the deployment's per-object limit before writing any of it."""
    if limit is not None and size > limit:
        raise ObjectTooLarge(
            f"{ref.url} is {size} bytes, over the storage limit of {limit} bytes "
            "(SKUTRAIN_STORAGE_MAX_OBJECT_BYTES): lower the run's checkpoint.max_object_bytes, "
            "or raise the limit if the storage provider accepts larger objects"
        )


class LocalStorage:
    """Buckets are folders under `root`; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path, max_object_bytes: int | None = None):
        self.root = Path(root)
        self.max_object_bytes = max_object_bytes

    def _path(self, ref: ObjectRef) -> Path:
        path = (self.root / ref.bucket / ref.key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"key escapes the storage root: {ref.url}")
        return path

    def put(self, ref: ObjectRef, data: bytes) -> None:
        check_object_size(ref, len(data), self.max_object_bytes)
        path = self._path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def get(self, ref: ObjectRef) -> bytes:
        try:
            return self._path(ref).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"object not found: {ref.url}") from exc

    def exists(self, ref: ObjectRef) -> bool:
        return self._path(ref).is_file()

    def size(self, ref: ObjectRef) -> int:
        try:
            return self._path(ref).stat().st_size
        except FileNotFoundError as exc:
            raise StorageError(f"object not found: {ref.url}") from exc

    def delete(self, ref: ObjectRef) -> None:
        self._path(ref).unlink(missing_ok=True)

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectRef]:
        base = self.root / bucket
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield ObjectRef(bucket, key)


@dataclass(frozen=True)
class S3Options:
    """How objects reach an S3 endpoint.

    - `bucket`: when set, every logical bucket is a prefix of this one physical bucket
      (``storage://checkpoints/runs/...`` -> ``<bucket>/checkpoints/runs/...``), for providers
      that give a deployment a single bucket; unset, each logical bucket is its own.
    - `max_object_bytes`: a put over it is refused before any byte is sent (providers cap an
      object's size: Supabase Storage's default is 50 MB), so a too-large object fails loudly
      here instead of half-way through an upload.
    - Bodies from `multipart_bytes` on go up as multipart uploads in parts of that size (S3
      wants parts of at least 5 MiB), so a failed request costs one part, not the object.
    - 5xx answers, throttling and connection errors are retried by botocore (`standard` mode,
      exponential backoff with jitter) up to `max_attempts` attempts in all.
    """

    bucket: str | None = None
    max_object_bytes: int | None = None
    multipart_bytes: int = 8 * 1024 * 1024
    max_attempts: int = 5


def s3_client(*, endpoint_url: str | None, region: str, access_key_id: str | None,
              secret_access_key: str | None, addressing_style: str = "auto",
              max_attempts: int = 5, connect_timeout: float = 10.0, read_timeout: float = 60.0):
    """A boto3 S3 client whose 5xx / throttling / connection errors are retried."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            s3={"addressing_style": addressing_style},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        ),
    )


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


class S3Storage:
    """Any S3-protocol endpoint; buckets are created on first write if they are missing."""

    def __init__(self, client, options: S3Options | None = None):
        self.client = client
        self.options = options or S3Options()
        self._known_buckets: set[str] = set()

    @classmethod
    def from_settings(cls, settings) -> "S3Storage":
        client = s3_client(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=_secret(settings.s3_access_key_id),
            secret_access_key=_secret(settings.s3_secret_access_key),
            addressing_style=settings.s3_addressing_style,
            max_attempts=settings.s3_max_attempts,
        )
        return cls(client, S3Options(
            bucket=settings.s3_bucket,
            max_object_bytes=settings.storage_max_object_bytes,
            multipart_bytes=settings.s3_multipart_bytes,
            max_attempts=settings.s3_max_attempts,
        ))

    def _location(self, bucket: str, key: str = "") -> tuple[str, str]:
        """(physical bucket, physical key) of a logical bucket and key."""
        if self.options.bucket:
            return self.options.bucket, f"{bucket}/{key}"
        return bucket, key

    def _ensure_bucket(self, bucket: str) -> None:
        if bucket in self._known_buckets:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            region = self.client.meta.region_name
            where = {} if region in (None, "us-east-1") else {
                "CreateBucketConfiguration": {"LocationConstraint": region}}
            self.client.create_bucket(Bucket=bucket, **where)
        self._known_buckets.add(bucket)

    def put(self, ref: ObjectRef, data: bytes) -> None:
        check_object_size(ref, len(data), self.options.max_object_bytes)
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self._location(ref.bucket, ref.key)
        transfer = TransferConfig(
            multipart_threshold=self.options.multipart_bytes,
            multipart_chunksize=self.options.multipart_bytes,
            use_threads=False,
        )
        try:
            self._ensure_bucket(bucket)
            self.client.upload_fileobj(io.BytesIO(data), bucket, key, Config=transfer)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(
                f"could not write {ref.url} after {self.options.max_attempts} attempts: {exc}"
            ) from exc

    def get(self, ref: ObjectRef) -> bytes:
        from botocore.exceptions import ClientError

        bucket, key = self._location(ref.bucket, ref.key)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise StorageError(f"object not readable: {ref.url}: {exc}") from exc

    def exists(self, ref: ObjectRef) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = self._location(ref.bucket, ref.key)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError:
            return False

    def size(self, ref: ObjectRef) -> int:
        from botocore.exceptions import ClientError

        bucket, key = self._location(ref.bucket, ref.key)
        try:
            return int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            raise StorageError(f"object not found: {ref.url}") from exc

    def delete(self, ref: ObjectRef) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self._location(ref.bucket, ref.key)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not delete {ref.url}: {exc}") from exc

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectRef]:
        physical, physical_prefix = self._location(bucket, prefix)
        strip = len(physical_prefix) - len(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=physical, Prefix=physical_prefix):
                for item in page.get("Contents", []):
                    yield ObjectRef(bucket, item["Key"][strip:])
        except self.client.exceptions.NoSuchBucket:
            return


def storage_from_settings(settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage.from_settings(settings)
    if settings.storage_backend == "local":
        return LocalStorage(settings.resolved_storage_dir, settings.storage_max_object_bytes)
    raise StorageError(
        f"unknown SKUTRAIN_STORAGE {settings.storage_backend!r}: use 'local' or 's3'"
    )
