"""Decoded images at the run's input size, cached on disk so each image is decoded once.

A GPU trains a ViT-B at well over 1,000 images/s at 224 px; decoding a full-size photo and
resizing it costs a CPU core several milliseconds, so decoding every image every epoch starves
the GPU. The first time an image is needed at a size it is decoded and resized once, and the
result (uint8 HWC, its shorter side `decoded_side(image_size)`) is kept as a ``.npy`` file;
every later epoch, and every later run at the same input size, loads that array (tens of
microseconds) and only augments it. Training and evaluation keep different sides: eval's centre
crop needs size / 0.875; training's random crops (down to half the area) need size / sqrt(0.5),
so even the smallest crop is downscaled to the input size, never blown up (upscaled crops gave
blurrier training images than the model is evaluated on).

- Decoding: Pillow, which ships libjpeg-turbo. For a JPEG, `draft` decodes at the largest
  DCT scale (1/2, 1/4, 1/8) that still covers the target, which skips most of the work on
  large photos (the same trick simplejpeg and PyTurboJPEG use); other formats shrink with
  `reduce` first (`reducing_gap`), then a bilinear resize. EXIF orientation is applied.
- Key: the source's content hash (the download cache names files by their sha256), the target
  side and `RESIZE_MODE`, so changed bytes, another input size or another resize method never
  reuse a stale array. Layout: ``<root>/<side>px-<RESIZE_MODE>/<h[:2]>/<h>.npy``.
- Writes are atomic (temp file + rename): DataLoader worker processes that decode the same
  image at once both write a complete file and either one wins.
- Nothing is evicted: about 200 KB per image for eval and 400 KB for training at 224 px (256 and
  317 px shorter sides); delete the folder to reclaim the space.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

EVAL_CROP_FRACTION = 0.875
RESIZE_MODE = "short-bilinear-v1"
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def decoded_side(image_size: int, crop_area: float = EVAL_CROP_FRACTION ** 2) -> int:
    """Shorter side kept in the cache, so that a crop of `crop_area` of the image (a fraction of
    its area) still has `image_size` pixels a side: the eval centre crop is 0.875 of the side;
    training's smallest random crop is its smallest crop scale."""
    return math.ceil(image_size / math.sqrt(crop_area))


def decode_resized(path: Path, side: int) -> np.ndarray:
    """The image at `path` as upright RGB uint8 HWC, its shorter side resized to `side`."""
    with Image.open(path) as img:
        img.draft("RGB", (side, side))  # JPEG only: DCT-domain downscale, never below `side`
        img = ImageOps.exif_transpose(img).convert("RGB")
    width, height = img.size
    scale = side / min(width, height)
    target = (max(side, round(width * scale)), max(side, round(height * scale)))
    if target != img.size:
        img = img.resize(target, Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(img)


def source_digest(path: Path) -> str:
    """The sha256 of the file's bytes: its name when the download cache named it so."""
    stem = Path(path).stem
    if _SHA256_NAME.fullmatch(stem):
        return stem
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class DecodedImageCache:
    """source file -> its decoded, resized array, decoded at most once per (content, side)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, digest: str, side: int) -> Path:
        return self.root / f"{side}px-{RESIZE_MODE}" / digest[:2] / f"{digest}.npy"

    def load(self, source: Path, side: int) -> np.ndarray:
        path = self.path_for(source_digest(source), side)
        try:
            return np.load(path)
        except FileNotFoundError:
            pass
        array = decode_resized(source, side)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
        return array
