"""Fetch the manifest's images into a local, content-addressed cache.

URLs: ``http(s)://`` through httpx, ``file://`` from the local disk and ``storage://`` through
a `Storage` (local directory or S3). Every image is fetched once per cache: a second
resolution of the same manifest makes no request at all.

Decisions:
- Concurrency is a thread pool (`max_workers`) over the distinct URLs; each thread blocks on
  I/O, which is all a fetch does, and httpx's client is thread-safe.
- Timeouts: `connect_timeout` and `read_timeout` (longest silence between two reads) per
  request, and `total_timeout` per attempt, so a server that trickles a byte at a time
  cannot hold a worker forever.
- Timeouts, connection errors and 5xx are retried up to `max_retries` times with exponential
  backoff and jitter (`backoff_delay`); 4xx, bad bodies and missing files are not, as asking
  again gives the same answer.
- A body over `max_bytes` is abandoned as soon as its Content-Length (or object size) says so,
  or as soon as the bytes read pass the cap; it is never read to the end.
- A body is accepted only if Pillow decodes it completely and converts it to RGB (`verify`
  then `load`), so truncated files and non-images are skipped at download, not mid-epoch.
- Nothing here raises for one bad image: each URL ends either as a cached file or as a skip
  with one reason of `SKIP_REASONS`, counted in the `DownloadReport`. Failures are not
  cached, so a later resolution tries them again.
- Cache layout under `cache_dir`: ``objects/<c[:2]>/<c>.<ext>`` holds the original bytes,
  named by their sha256 `c` (identical images behind different URLs are stored once), and
  ``index/<u[:2]>/<u>`` holds that file name, `u` being the sha256 of the URL string. Both are
  written atomically, object first, so an index entry always points at a complete file.
  ``decoded/`` holds the images decoded at a run's input size (`decoded.DecodedImageCache`).
- Reports carry URLs through `redact_url`: no user:password, query values masked (signed
  URLs carry their secrets there).
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError
from PIL import Image

from services.common.errors import StorageError
from services.common.retry import backoff_delay
from services.common.storage import SCHEME as STORAGE_SCHEME
from services.common.storage import ObjectRef, Storage
from services.trainer.data.manifest import ImageRecord

SKIP_REASONS = (
    "not_found",
    "client_error",
    "server_error",
    "timeout",
    "not_an_image",
    "empty",
    "too_large",
    "connection_error",
)
RETRYABLE = frozenset({"server_error", "timeout", "connection_error"})
MAX_FAILED_SAMPLES = 10


@dataclass(frozen=True)
class DownloadConfig:
    """Timeouts in seconds; `max_retries` counts retries after the first attempt."""

    cache_dir: Path
    max_workers: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    max_bytes: int = 25 * 1024 * 1024
    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 10.0


@dataclass(frozen=True)
class LocalImage:
    """A record's image on local disk; `decoded_dir` is where its decoded copies are cached
    (`decoded.DecodedImageCache`), beside the download cache that holds it."""

    record: ImageRecord
    path: Path
    decoded_dir: Path | None = None


@dataclass
class DownloadReport:
    """Counts per record (two records with one URL count twice).

    `cached`: records served from the cache without a request; `attempts`: fetches made
    (requests, file reads, storage reads), retries included; `failed_samples`: up to 10
    skipped records as {"url" (redacted), "reason", "detail"}.
    """

    total: int = 0
    ok: int = 0
    cached: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    failed_samples: list[dict] = field(default_factory=list)
    attempts: int = 0

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "ok": self.ok,
            "cached": self.cached,
            "skipped": self.n_skipped,
            "skipped_by_reason": dict(self.skipped),
            "failed_samples": list(self.failed_samples),
            "attempts": self.attempts,
        }


@dataclass
class DownloadResult:
    images: list[LocalImage]
    report: DownloadReport


def redact_url(url: str) -> str:
    """The URL without user:password and with every query value replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{name}=***" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def decode_rgb(data: bytes) -> Image.Image:
    """Decode completely and convert to RGB; raises for a truncated or non-image body."""
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ImageCache:
    """URL -> local file, content-addressed (layout in the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _index_path(self, url: str) -> Path:
        key = hashlib.sha256(url.encode()).hexdigest()
        return self.root / "index" / key[:2] / key

    def lookup(self, url: str) -> Path | None:
        try:
            name = self._index_path(url).read_text().strip()
        except FileNotFoundError:
            return None
        path = self.root / "objects" / name[:2] / name
        return path if path.is_file() else None

    def store(self, url: str, data: bytes, extension: str) -> Path:
        name = f"{hashlib.sha256(data).hexdigest()}.{extension}"
        path = self.root / "objects" / name[:2] / name
        if not path.is_file():
            _write_atomic(path, data)
        _write_atomic(self._index_path(url), name.encode())
        return path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _storage_reason(exc: StorageError) -> str:
    """S3 errors keep their ClientError as the cause: its status decides. Otherwise (a local
    file that is not there) the object is missing."""
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        code = cause.response.get("Error", {}).get("Code", "")
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status == 404 or code in ("404", "NoSuchKey", "NoSuchBucket"):
            return "not_found"
        return "server_error" if status >= 500 else "client_error"
    return "not_found"


class _Fetcher:
    """Gets the bytes behind one URL, one attempt at a time; raises _Skip on failure."""

    def __init__(self, config: DownloadConfig, storage: Storage | None, client: httpx.Client):
        self.config = config
        self.storage = storage
        self.client = client

    def fetch(self, url: str) -> bytes:
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return self._http(url)
        if scheme == "file":
            return self._file(url)
        if url.startswith(STORAGE_SCHEME):
            return self._storage(url)
        raise _Skip("client_error", f"unsupported URL scheme {scheme!r}")

    def _check_size(self, size: int) -> None:
        if size > self.config.max_bytes:
            raise _Skip("too_large", f"{size} bytes, over the {self.config.max_bytes} cap")

    def _http(self, url: str) -> bytes:
        try:
            with self.client.stream("GET", url) as resp:
                code = resp.status_code
                if code in (404, 410):
                    raise _Skip("not_found", f"HTTP {code}")
                if code >= 500:
                    raise _Skip("server_error", f"HTTP {code}")
                if not 200 <= code < 300:
                    raise _Skip("client_error", f"HTTP {code}")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit():
                    self._check_size(int(declared))
                deadline = time.monotonic() + self.config.total_timeout
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    self._check_size(len(body))
                    if time.monotonic() > deadline:
                        raise _Skip(
                            "timeout", f"body not complete after {self.config.total_timeout}s"
                        )
                return bytes(body)
        except httpx.TimeoutException as exc:
            raise _Skip("timeout", type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise _Skip("connection_error", type(exc).__name__) from None
        except httpx.DecodingError as exc:
            raise _Skip("not_an_image", type(exc).__name__) from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise _Skip("client_error", type(exc).__name__) from None

    def _file(self, url: str) -> bytes:
        path = Path(url2pathname(urlsplit(url).path))
        try:
            self._check_size(path.stat().st_size)
            return path.read_bytes()
        except FileNotFoundError:
            raise _Skip("not_found", "no such file") from None
        except OSError as exc:
            raise _Skip("client_error", type(exc).__name__) from None

    def _storage(self, url: str) -> bytes:
        if self.storage is None:
            raise _Skip("client_error", "storage:// URL but no storage was given")
        try:
            ref = ObjectRef.parse(url)
        except StorageError:
            raise _Skip("client_error", "malformed storage URL") from None
        try:
            self._check_size(self.storage.size(ref))
            return self.storage.get(ref)
        except StorageError as exc:
            raise _Skip(_storage_reason(exc), type(exc.__cause__ or exc).__name__) from None
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise _Skip("timeout", type(exc).__name__) from None
        except (BotoCoreError, OSError) as exc:
            raise _Skip("connection_error", type(exc).__name__) from None


def _accept(data: bytes) -> str:
    """The file extension for an acceptable image body; raises _Skip otherwise."""
    if not data:
        raise _Skip("empty", "zero-byte body")
    try:
        with Image.open(io.BytesIO(data)) as img:
            extension = (img.format or "img").lower()
        decode_rgb(data)
    except Image.DecompressionBombError as exc:
        raise _Skip("too_large", str(exc)) from None
    except Exception as exc:  # Pillow raises many types for bad bodies; all mean "not an image"
        raise _Skip("not_an_image", f"{type(exc).__name__}: {exc}") from None
    return "jpg" if extension == "jpeg" else extension


@dataclass
class _Outcome:
    path: Path | None = None
    skip: _Skip | None = None
    cached: bool = False
    attempts: int = 0


def _resolve(
    url: str,
    fetcher: _Fetcher,
    cache: ImageCache,
    config: DownloadConfig,
    sleep: Callable[[float], None],
    rng: random.Random,
) -> _Outcome:
    retry = 0
    while True:
        try:
            data = fetcher.fetch(url)
            return _Outcome(path=cache.store(url, data, _accept(data)), attempts=retry + 1)
        except _Skip as skip:
            if skip.reason not in RETRYABLE or retry >= config.max_retries:
                return _Outcome(skip=skip, attempts=retry + 1)
            sleep(backoff_delay(retry, config.backoff_base, config.backoff_max, rng.random()))
            retry += 1


def download_images(
    records: Sequence[ImageRecord],
    config: DownloadConfig,
    *,
    storage: Storage | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Resolve every record to a cached local file or a counted skip; never raises for one URL."""
    cache = ImageCache(config.cache_dir)
    outcomes: dict[str, _Outcome] = {}
    to_fetch: list[str] = []
    for url in dict.fromkeys(r.url for r in records):
        path = cache.lookup(url)
        if path is not None:
            outcomes[url] = _Outcome(path=path, cached=True)
        else:
            to_fetch.append(url)

    if to_fetch:
        timeout = httpx.Timeout(
            config.read_timeout, connect=config.connect_timeout, pool=config.total_timeout
        )
        limits = httpx.Limits(max_connections=config.max_workers)
        rng = random.Random()  # only for jitter; Random.random is thread-safe

        with httpx.Client(timeout=timeout, limits=limits, follow_redirects=True) as client:
            fetcher = _Fetcher(config, storage, client)
            with ThreadPoolExecutor(max_workers=config.max_workers) as pool:
                resolved = pool.map(
                    lambda url: _resolve(url, fetcher, cache, config, sleep, rng), to_fetch
                )
                outcomes.update(zip(to_fetch, resolved))

    return _collect(records, outcomes, decoded_dir=cache.root / "decoded")


def _collect(records: Sequence[ImageRecord], outcomes: dict[str, _Outcome], *,
             decoded_dir: Path) -> DownloadResult:
    report = DownloadReport(total=len(records))
    report.attempts = sum(o.attempts for o in outcomes.values())
    images: list[LocalImage] = []
    for record in records:
        outcome = outcomes[record.url]
        if outcome.path is not None:
            images.append(LocalImage(record, outcome.path, decoded_dir))
            report.ok += 1
            report.cached += outcome.cached
            continue
        reason = outcome.skip.reason
        report.skipped[reason] += 1
        if len(report.failed_samples) < MAX_FAILED_SAMPLES:
            report.failed_samples.append(
                {"url": redact_url(record.url), "reason": reason, "detail": outcome.skip.detail}
            )
    return DownloadResult(images=images, report=report)
