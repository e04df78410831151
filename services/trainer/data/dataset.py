"""A torch Dataset over downloaded images: (CHW float tensor, label index, domain).

torchvision is not a dependency, so the few transforms are written here with Pillow and numpy
(numpy, not torch ops, because per-op overhead dominates on 64 px images); the random
parameters are one `torch.rand` draw per image, so `torch.manual_seed` and DataLoader's
per-worker seeding make them reproducible.

- Train: random resized crop (scale 0.5-1.0 of the area, aspect 3/4-4/3: a product must stay
  recognisable, so crops are milder than ImageNet's 0.08), horizontal flip, and a modest
  brightness / contrast / saturation jitter (factors 0.8-1.2; no hue shift, since brand colours
  are part of what identifies a product).
- Eval: resize the shorter side to `image_size / 0.875`, centre crop `image_size`.
- Both end normalised with the ImageNet mean and std, which DINOv2/v3 were trained with.
Both start from the image decoded with its shorter side at `decoded_side` (eval: size / 0.875;
train: size / sqrt(0.5), so the smallest random crop is still downscaled to the input size), via
`decoded.decode_resized`, cached on disk (`decoded.DecodedImageCache`) when the image came from
the download cache: every epoch after the first, and every later run at the same size, only
loads that uint8 array and augments it.

Besides `labels` and `domains` (what the sampler plans from), a dataset lists per item its
`categories` (the product's category, for per-category metrics) and `sources` (see
`image_source`: retrieval never counts an item of the query's own source), and per label index
its `label_names` (the label string, the product id by default) for hard-case reports.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from services.trainer.data.decoded import (
    EVAL_CROP_FRACTION,
    DecodedImageCache,
    decode_resized,
    decoded_side,
)
from services.trainer.data.download import LocalImage

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
JITTER = 0.2
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)
N_DRAWS = 2 * CROP_TRIES + 2 + 4  # crop tries, crop position, flip, three jitter factors


def image_source(domain: str, url: str, source_key: str | None) -> str:
    """The capture an image comes from; retrieval excludes a query's own capture.

    - A photo's augmented copies and its cutout carry the photo's `source_key`: one source.
    - Synthetic frames are one turntable video: every frame of a video (its folder,
      ``.../frames/frame_0003.png`` -> ``.../frames``) is one source. Its frames share the
      studio backdrop and light and differ only by the rotation, so neighbouring frames are
      near-duplicates (even a colour histogram matches them); a frame has to be matched by
      the product's photos or cutouts instead (and they by its frames).
    - Any other image without a `source_key` is a source of its own (its URL).
    """
    if domain == "synthetic":
        return "video:" + url.rsplit("/", 1)[0]
    if source_key:
        return "photo:" + source_key
    return "image:" + url


def build_label_index(labels: Iterable[str]) -> dict[str, int]:
    """Label -> class index, in sorted label order so it is the same on every run."""
    return {label: i for i, label in enumerate(sorted(set(labels)))}


def _lerp(bounds: tuple[float, float], u: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def random_crop_box(width: int, height: int, u: Sequence[float]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) within CROP_SCALE / CROP_RATIO, from uniforms `u` in [0, 1].

    `u` holds 2 numbers per try (scale, log aspect) and 2 for the position; after
    CROP_TRIES misfits (a very long image) it falls back to the centred square.
    """
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for t in range(CROP_TRIES):
        target = width * height * _lerp(CROP_SCALE, u[2 * t])
        ratio = math.exp(_lerp(log_ratio, u[2 * t + 1]))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = min(int(u[2 * CROP_TRIES] * (width - w + 1)), width - w)
            top = min(int(u[2 * CROP_TRIES + 1] * (height - h + 1)), height - h)
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def train_transform(x: np.ndarray, size: int) -> torch.Tensor:
    """Random resized crop, flip, brightness / contrast / saturation jitter, normalise.

    `x` is a decoded uint8 HWC image (`decode_resized`)."""
    u = torch.rand(N_DRAWS).tolist()  # one draw from torch's generator per image
    height, width = x.shape[:2]
    img = Image.fromarray(x).resize((size, size), Image.BILINEAR,
                                    box=random_crop_box(width, height, u))
    brightness, contrast, saturation = (_lerp((1 - JITTER, 1 + JITTER), v) for v in u[-3:])
    x = np.asarray(img, np.float32) * np.float32(brightness / 255.0)
    if u[2 * CROP_TRIES + 2] < 0.5:
        x = x[:, ::-1]
    mean = float((x @ _GRAY).mean())
    x = (x - mean) * np.float32(contrast) + np.float32(mean)
    gray = (x @ _GRAY)[..., None]
    x = (x - gray) * np.float32(saturation) + gray
    return _normalised_chw(np.clip(x, 0.0, 1.0, out=x))


def eval_transform(x: np.ndarray, size: int) -> torch.Tensor:
    """Centre crop `size` from a decoded uint8 HWC image whose shorter side is already
    `decoded_side(size)` (= size / 0.875), normalise."""
    height, width = x.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    crop = x[top:top + size, left:left + size]
    return _normalised_chw(crop.astype(np.float32) * np.float32(1 / 255.0))


def _normalised_chw(x: np.ndarray) -> torch.Tensor:
    """HWC floats in [0, 1] -> CHW tensor normalised with the ImageNet statistics."""
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class ProductImageDataset(Dataset):
    """Items are (image CHW float32, label index, domain); `labels` serves P-K samplers.

    Per item also `categories` and `sources` (`image_source`), and `label_names` maps each
    label index back to its label string, which the evaluation reports instead of indices.
    """

    def __init__(
        self,
        images: Sequence[LocalImage],
        image_size: int,
        *,
        train: bool,
        label_to_index: Mapping[str, int] | None = None,
    ):
        self.images = list(images)
        self.image_size = image_size
        self.train = train
        self.label_to_index = dict(
            label_to_index
            if label_to_index is not None
            else build_label_index(i.record.label for i in self.images)
        )
        self.labels = [self.label_to_index[i.record.label] for i in self.images]
        self.domains = [i.record.domain for i in self.images]
        self.categories = [i.record.category for i in self.images]
        self.sources = [
            image_source(i.record.domain, i.record.url, i.record.source_key) for i in self.images
        ]
        self.label_names = {index: label for label, index in self.label_to_index.items()}

    def __len__(self) -> int:
        return len(self.images)

    def decoded(self, index: int) -> np.ndarray:
        """Item `index` decoded at this dataset's size: from the decoded cache when the image
        has one (images from the download cache do), else decoded now."""
        image = self.images[index]
        crop_area = CROP_SCALE[0] if self.train else EVAL_CROP_FRACTION ** 2
        side = decoded_side(self.image_size, crop_area)
        if image.decoded_dir is None:
            return decode_resized(image.path, side)
        return DecodedImageCache(image.decoded_dir).load(image.path, side)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        transform = train_transform if self.train else eval_transform
        x = transform(self.decoded(index), self.image_size)
        return x, self.labels[index], self.domains[index]
