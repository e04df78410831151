"""Object storage: a local directory by default, any S3-compatible endpoint through boto3.

Objects are named by `storage://<bucket>/<key>` URLs, whatever the backend, so a URL written
by the catalog or the trainer stays valid when the deployment moves from a local directory to
S3 (Supabase Storage, MinIO, AWS).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from services.common.errors import StorageError

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


class LocalStorage:
    """Buckets are folders under `root`; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, ref: ObjectRef) -> Path:
        path = (self.root / ref.bucket / ref.key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"key escapes the storage root: {ref.url}")
        return path

    def put(self, ref: ObjectRef, data: bytes) -> None:
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


class S3Storage:
    """Any S3-protocol endpoint; buckets are created on first write."""

    def __init__(self, client):
        self.client = client
        self._known_buckets: set[str] = set()

    @classmethod
    def from_settings(cls, settings) -> "S3Storage":
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=(
                settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None
            ),
            aws_secret_access_key=(
                settings.s3_secret_access_key.get_secret_value()
                if settings.s3_secret_access_key
                else None
            ),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        return cls(client)

    def _ensure_bucket(self, bucket: str) -> None:
        if bucket in self._known_buckets:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)
        self._known_buckets.add(bucket)

    def put(self, ref: ObjectRef, data: bytes) -> None:
        self._ensure_bucket(ref.bucket)
        self.client.put_object(Bucket=ref.bucket, Key=ref.key, Body=data)

    def get(self, ref: ObjectRef) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
        except ClientError as exc:
            raise StorageError(f"object not readable: {ref.url}: {exc}") from exc

    def exists(self, ref: ObjectRef) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=ref.bucket, Key=ref.key)
            return True
        except ClientError:
            return False

    def size(self, ref: ObjectRef) -> int:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=ref.bucket, Key=ref.key)["ContentLength"])
        except ClientError as exc:
            raise StorageError(f"object not found: {ref.url}") from exc

    def delete(self, ref: ObjectRef) -> None:
        self.client.delete_object(Bucket=ref.bucket, Key=ref.key)

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectRef]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectRef(bucket, item["Key"])
        except self.client.exceptions.NoSuchBucket:
            return


def storage_from_settings(settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage.from_settings(settings)
    if settings.storage_backend == "local":
        return LocalStorage(settings.resolved_storage_dir)
    raise StorageError(
        f"unknown SKUTRAIN_STORAGE {settings.storage_backend!r}: use 'local' or 's3'"
    )
