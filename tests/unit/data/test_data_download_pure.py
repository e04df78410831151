import io

import pytest
from PIL import Image

from services.trainer.data.download import backoff_delay, decode_rgb, redact_url


@pytest.mark.parametrize(
    ("retry", "jitter", "expected"),
    [
        (0, 0.0, 0.25),
        (0, 1.0, 0.5),
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (3, 0.5, 3.0),
        (4, 1.0, 8.0),
        (5, 0.0, 5.0),
        (5, 1.0, 10.0),
        (30, 0.5, 7.5),
    ],
)
def test_backoff_values(retry, jitter, expected):
    assert backoff_delay(retry, base=0.5, cap=10.0, jitter=jitter) == pytest.approx(expected)


def test_backoff_grows_until_the_cap_and_stays_in_its_band():
    ceilings = [min(10.0, 0.5 * 2**r) for r in range(12)]
    for retry, ceiling in enumerate(ceilings):
        for jitter in (0.0, 0.3, 0.99, 1.0):
            assert ceiling / 2 <= backoff_delay(retry, 0.5, 10.0, jitter) <= ceiling
    assert ceilings == sorted(ceilings)


@pytest.mark.parametrize("jitter", [-0.1, 1.5])
def test_backoff_rejects_jitter_outside_unit_interval(jitter):
    with pytest.raises(ValueError):
        backoff_delay(0, 0.5, 10.0, jitter)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:secret@cdn.example.com:8443/a/b.png?X-Amz-Signature=abc&w=2#frag",
         "https://cdn.example.com:8443/a/b.png?X-Amz-Signature=***&w=***"),
        ("http://token@host/x.jpg", "http://host/x.jpg"),
        ("https://host/plain.png", "https://host/plain.png"),
        ("storage://catalog/products/1/frames/frame_0000.png",
         "storage://catalog/products/1/frames/frame_0000.png"),
        ("file:///tmp/a.png", "file:///tmp/a.png"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert "secret" not in redact_url(url) and "abc" not in redact_url(url)


def png_bytes(mode="RGB", size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 1 if mode in ("P", "L") else (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_decode_rgb_converts(mode):
    img = decode_rgb(png_bytes(mode))
    assert img.mode == "RGB" and img.size == (8, 8)


def test_decode_rgb_rejects_truncated_and_garbage():
    big = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(big, "JPEG")
    for body in (big.getvalue()[: len(big.getvalue()) // 2], png_bytes()[:-20], b"not an image"):
        with pytest.raises(Exception):
            decode_rgb(body)
