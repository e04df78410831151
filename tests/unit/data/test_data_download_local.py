"""file:// resolution: the downloader's checks without a server."""
import io

from PIL import Image

from services.trainer.data.download import DownloadConfig, download_images
from services.trainer.data.manifest import ImageRecord


def record(url: str) -> ImageRecord:
    return ImageRecord(1, url, "real", None, "c", "b", "1")


def test_file_urls_end_as_documented(tmp_path):
    good = tmp_path / "good.png"
    Image.new("P", (16, 16), 3).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG garbage" * 10)
    (tmp_path / "big.png").write_bytes(b"x" * 5000)
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(jpeg, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[:600])
    names = ["good.png", "empty.png", "garbage.png", "big.png", "truncated.jpg", "missing.png"]
    records = [record((tmp_path / n).as_uri()) for n in names] + [record("ftp://host/x.png")]

    cfg = DownloadConfig(cache_dir=tmp_path / "cache", max_bytes=4000)
    result = download_images(records, cfg)

    assert [i.record.url for i in result.images] == [good.as_uri()]
    assert Image.open(result.images[0].path).size == (16, 16)
    report = result.report
    assert report.total == 7 and report.ok == 1 and report.n_skipped == 6
    assert {k: v for k, v in report.skipped.items() if v} == {
        "empty": 1, "not_an_image": 2, "too_large": 1, "not_found": 1, "client_error": 1,
    }
    assert len(report.failed_samples) == 6
    assert report.attempts == 7  # none of these failures is retried


def test_cache_is_content_addressed(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (4, 4), "red").save(img)
    (tmp_path / "b.png").write_bytes(img.read_bytes())
    cfg = DownloadConfig(cache_dir=tmp_path / "cache")
    records = [record(img.as_uri()), record((tmp_path / "b.png").as_uri()), record(img.as_uri())]
    first = download_images(records, cfg)
    assert first.report.ok == 3 and first.report.cached == 0 and first.report.attempts == 2
    assert len({i.path for i in first.images}) == 1  # one object for identical bytes
    assert len(list((tmp_path / "cache" / "objects").rglob("*.png"))) == 1

    img.unlink()
    second = download_images(records, cfg)
    assert second.report.ok == 3 and second.report.cached == 3 and second.report.attempts == 0
