import io

import pytest
from PIL import Image

from services.trainer.data.download import decode_rgb, redact_url


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
