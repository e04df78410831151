"""The downloader against a real HTTP server on loopback, misbehaving on purpose."""
import io
import socket
import time

import pytest
from PIL import Image

from services.trainer.data.download import DownloadConfig, download_images
from services.trainer.data.manifest import ImageRecord

CHUNK = b"\0" * 65536


def png_bytes(colour=(200, 30, 30), size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def answer(body: bytes, status: int = 200, length: bool = True):
    def route(handler, attempt):
        handler.send_response(status)
        handler.send_header("Content-Type", "image/png")
        if length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return route


def first_then(first, then):
    return lambda handler, attempt: (first if attempt == 1 else then)(handler, attempt)


def stall(seconds: float, then):
    def route(handler, attempt):
        time.sleep(seconds)
        then(handler, attempt)

    return route


def trickle(body: bytes, piece: int, pause: float):
    def route(handler, attempt):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for i in range(0, len(body), piece):
            handler.wfile.write(body[i : i + piece])
            handler.wfile.flush()
            time.sleep(pause)

    return route


def endless(sent: list, declared: int | None):
    """Streams zeros until the client hangs up; `sent` collects the bytes written."""

    def route(handler, attempt):
        handler.send_response(200)
        if declared is not None:
            handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        for _ in range(800):  # 50 MiB at most
            handler.wfile.write(CHUNK)
            sent.append(len(CHUNK))

    return route


def record(url: str) -> ImageRecord:
    return ImageRecord(1, url, "real", None, "c", "b", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config(tmp_path):
    return DownloadConfig(
        cache_dir=tmp_path / "cache",
        max_workers=8,
        connect_timeout=1.0,
        read_timeout=0.5,
        total_timeout=1.0,
        max_bytes=256 * 1024,
        max_retries=1,
        backoff_base=0.02,
        backoff_max=0.1,
    )


def test_every_failure_is_skipped_counted_and_the_run_goes_on(image_server, config):
    image = png_bytes()
    declared_sent, streamed_sent = [], []
    image_server.routes.update(
        {
            "/ok.png": answer(image),
            "/forbidden.png": answer(b"no", status=403),
            "/flaky.png": first_then(answer(b"oops", status=500), answer(png_bytes((1, 2, 3)))),
            "/down.png": answer(b"down", status=503),
            "/stall.png": first_then(stall(1.5, answer(image)), answer(png_bytes((9, 9, 9)))),
            "/garbage.png": answer(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
            "/empty.png": answer(b""),
            "/huge-declared.png": endless(declared_sent, declared=10**9),
            "/huge-streamed.png": endless(streamed_sent, declared=None),
            "/trickle-ok.png": trickle(png_bytes((5, 5, 5)), piece=40, pause=0.02),
            "/trickle-slow.png": trickle(png_bytes((6, 6, 6)) + b"\0" * 4000, piece=100, pause=0.1),
        }
    )
    paths = ["/ok.png", "/missing.png", "/forbidden.png", "/flaky.png", "/down.png",
             "/stall.png", "/garbage.png", "/empty.png", "/huge-declared.png",
             "/huge-streamed.png", "/trickle-ok.png", "/trickle-slow.png"]
    host = image_server.url("").split("//")[1]
    leaky = f"http://alice:hunter2@{host}/missing.png?token=s3cr3t"
    refused = f"http://127.0.0.1:{free_port()}/nothing.png"
    records = [record(image_server.url(p)) for p in paths] + [record(leaky), record(refused)]

    started = time.monotonic()
    result = download_images(records, config)
    elapsed = time.monotonic() - started

    report = result.report
    ok = sorted(i.record.url.rsplit("/", 1)[1] for i in result.images)
    assert ok == ["flaky.png", "ok.png", "stall.png", "trickle-ok.png"]
    assert {k: v for k, v in report.skipped.items() if v} == {
        "not_found": 2,  # /missing.png twice (one with credentials)
        "client_error": 1,  # 403
        "server_error": 1,  # 503 after its retry
        "not_an_image": 1,
        "empty": 1,
        "too_large": 2,  # declared, and streamed past the cap
        "timeout": 1,  # the trickle that outlasts total_timeout
        "connection_error": 1,  # nothing listening
    }
    assert report.total == 14 and report.ok == 4 and report.n_skipped == 10

    # retried: 5xx, stalls, timeouts; not retried: 4xx, bad bodies
    assert image_server.requests["/flaky.png"] == 2
    assert image_server.requests["/down.png"] == 2
    assert image_server.requests["/stall.png"] == 2
    assert image_server.requests["/trickle-slow.png"] == 2
    for path in ("/missing.png", "/forbidden.png", "/garbage.png", "/empty.png",
                 "/huge-declared.png", "/huge-streamed.png", "/trickle-ok.png", "/ok.png"):
        assert image_server.requests[path] == (2 if path == "/missing.png" else 1), path

    # the stalled server's retry answered with its second (distinct) image
    stalled = next(i for i in result.images if i.record.url.endswith("/stall.png"))
    assert Image.open(stalled.path).getpixel((0, 0)) == (9, 9, 9)
    # oversized bodies were abandoned early, not read to the end
    assert sum(streamed_sent) < 16 * 1024 * 1024
    assert sum(declared_sent) < 16 * 1024 * 1024
    assert elapsed < 6

    samples = report.failed_samples
    assert len(samples) == 10
    assert all(set(s) == {"url", "reason", "detail"} for s in samples)
    text = repr(report.to_dict())
    assert "hunter2" not in text and "alice" not in text and "s3cr3t" not in text
    assert f"http://{host}/missing.png?token=***" in text


def test_second_resolution_makes_no_requests(image_server, config):
    for i in range(12):
        image_server.routes[f"/p/{i}.png"] = answer(png_bytes((i, 100, 200)))
    records = [record(image_server.url(f"/p/{i}.png")) for i in range(12)]
    records.append(record(image_server.url("/p/3.png")))  # a URL twice is fetched once

    first = download_images(records, config)
    assert first.report.ok == 13 and first.report.cached == 0
    assert image_server.total_requests == 12

    second = download_images(records, config)
    assert image_server.total_requests == 12  # zero new requests
    assert second.report.ok == 13 and second.report.cached == 13 and second.report.attempts == 0
    assert [i.path for i in second.images] == [i.path for i in first.images]
    assert Image.open(second.images[5].path).getpixel((0, 0)) == (5, 100, 200)


def test_concurrency_is_bounded(image_server, tmp_path):
    for i in range(12):
        image_server.routes[f"/slow/{i}.png"] = stall(0.15, answer(png_bytes((i, 0, 0))))
    records = [record(image_server.url(f"/slow/{i}.png")) for i in range(12)]
    result = download_images(records, DownloadConfig(cache_dir=tmp_path, max_workers=3))
    assert result.report.ok == 12
    assert 1 < image_server.max_in_flight <= 3


def test_body_that_cannot_be_decoded_is_not_an_image(image_server, config):
    def bad_gzip(handler, attempt):
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", "12")
        handler.end_headers()
        handler.wfile.write(b"not gzip!!!!")

    image_server.routes["/gz.png"] = bad_gzip
    result = download_images([record(image_server.url("/gz.png"))], config)
    assert result.report.skipped["not_an_image"] == 1
    assert image_server.requests["/gz.png"] == 1
